"""Silero VAD (silero-vad package): two of its ONNX exports, on speech synthesised with espeak-ng.

`silero_vad.onnx` holds all weights inside an If on the sample rate (16 kHz and 8 kHz branches, STFT conv,
encoder convs, LSTM cell as MatMuls); `silero_vad_16k_op15.onnx` is the 16 kHz opset-15 export. Both run
chunk by chunk as the package's wrapper does: 512 new samples at 16 kHz plus the 64 previous ones as context,
the recurrent state carried from call to call.

Clips: 1-2 English sentences from the license texts spoken by espeak-ng (voices en, en-us, en+f3; 130-190 words
per minute), resampled 22,050 -> 16,000 Hz, with leading, separating and trailing silence, white noise at
about -50 dBFS. A chunk is labelled speech when it overlaps an utterance's voiced span (from the clean
signal's energy); the model's decision is probability >= 0.5.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from .common import Fidelity, ZooModel, license_sentences

CHUNK, CONTEXT, RATE = 512, 64, 16000
VOICES = ["en", "en-us", "en+f3"]


def _speak(text: str, voice: str, speed: int) -> np.ndarray:
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                           capture_output=True)
        except FileNotFoundError:
            raise SystemExit("espeak-ng is missing: apt-get install espeak-ng") from None
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    if rate != RATE:
        g = np.gcd(rate, RATE)
        audio = resample_poly(audio, RATE // g, rate // g).astype(np.float32)
    return audio


def _voiced_span(audio: np.ndarray) -> tuple[int, int]:
    energy = np.convolve(audio ** 2, np.ones(160) / 160, "same")
    voiced = np.nonzero(energy > 1e-4 * energy.max() + 1e-8)[0]
    return int(voiced[0]), int(voiced[-1]) + 1


def _clip(rng: np.random.Generator, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pieces, spans, position = [], [], 0
    for k in range(int(rng.integers(1, 3))):
        silence = np.zeros(int(RATE * rng.uniform(0.4, 1.2)), np.float32)
        text = sentences[int(rng.integers(len(sentences)))]
        text = " ".join(text.split()[:int(rng.integers(5, 12))])
        speech = _speak(text, VOICES[int(rng.integers(len(VOICES)))], int(rng.integers(130, 191)))
        start, end = _voiced_span(speech)
        pieces += [silence, speech]
        position += len(silence)
        spans.append((position + start, position + end))
        position += len(speech)
    pieces.append(np.zeros(int(RATE * rng.uniform(0.4, 1.0)), np.float32))
    audio = np.concatenate(pieces)
    audio = audio + rng.normal(0, 0.003, len(audio)).astype(np.float32)
    chunks = len(audio) // CHUNK
    labels = np.zeros(chunks, np.int64)
    for start, end in spans:
        labels[start // CHUNK: min(chunks, (end + CHUNK - 1) // CHUNK)] = 1
    return audio[:chunks * CHUNK].astype(np.float32), labels


def _windows(audio: np.ndarray) -> np.ndarray:
    """[chunks, 576]: each 512-sample chunk with the 64 samples before it (zeros before the start)."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return np.stack([padded[i * CHUNK: i * CHUNK + CHUNK + CONTEXT] for i in range(len(audio) // CHUNK)])


def _prepare(model: Path, folder: Path, rng: np.random.Generator) -> None:
    eval_sentences = license_sentences(["GPL-3", "Apache-2.0"])
    calib_sentences = license_sentences(["LGPL-2.1", "Artistic"])
    clips = [_clip(rng, eval_sentences) for _ in range(16)]
    calib_clips = [_windows(_clip(rng, calib_sentences)[0]) for _ in range(4)]
    calib = np.concatenate(calib_clips)[:256]
    np.savez_compressed(folder / "eval.npz", **{f"audio{i}": c[0] for i, c in enumerate(clips)},
                        **{f"labels{i}": c[1] for i, c in enumerate(clips)})
    # The model's own feed for a batch of chunks: input [N, 576], state [2, N, 128], sr a scalar. Each chunk gets
    # the state the original model carries into it when it runs its clip from the start (a zero state for every
    # chunk would leave the recurrent weights out of what a budget measures: their product with a zero state is 0).
    np.savez_compressed(folder / "calib.npz", input=calib, state=_carried_states(model, calib_clips)[:, :len(calib)],
                        sr=np.asarray(RATE, np.int64))


def _carried_states(model: Path, clips: list[np.ndarray]) -> np.ndarray:
    """[2, chunks, 128]: the state the original model holds before each chunk of each clip, run one chunk at a time
    from a zero state per clip, as the package runs it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    sr = np.asarray(RATE, np.int64)
    states = []
    for windows in clips:
        state = np.zeros((2, 1, 128), np.float32)
        for window in windows:
            states.append(state)
            _, state = session.run(None, {"input": window[None], "state": state, "sr": sr})
    return np.concatenate(states, axis=1)


def _clips(data: dict) -> int:
    return sum(1 for k in data if k.startswith("audio"))


def _infer(session, data: dict) -> dict:
    probs = []
    sr = np.asarray(RATE, np.int64)
    for c in range(_clips(data)):
        state = np.zeros((2, 1, 128), np.float32)
        out = []
        for window in _windows(data[f"audio{c}"]):
            p, state = session.run(None, {"input": window[None], "state": state, "sr": sr})
            out.append(float(p.reshape(-1)[0]))
        probs.append(np.asarray(out, np.float32))
    flat = np.concatenate(probs)
    return {"raw": flat[None], "pred": flat}


def _accuracy(pred: dict, data: dict) -> float:
    labels = np.concatenate([data[f"labels{c}"] for c in range(_clips(data))])
    return 100 * float(((pred["pred"] >= 0.5) == labels).mean())


def _fidelity(a: dict, b: dict, data: dict) -> dict:
    return {"decision agreement": float(((a["pred"] >= 0.5) == (b["pred"] >= 0.5)).mean()),
            "max prob error": float(np.abs(a["pred"] - b["pred"]).max())}


def _feeds(data: dict, batch: int) -> dict:
    return {"input": _windows(data["audio0"])[:batch], "state": np.zeros((2, batch, 128), np.float32),
            "sr": np.asarray(RATE, np.int64)}


def _model(name: str, member: str, summary: str) -> ZooModel:
    return ZooModel(
        name=name, package="silero-vad==6.2.3", member=member, summary=summary,
        data="16 espeak-ng clips (1-2 license sentences, 3 voices, silence and -50 dBFS noise), 512-sample chunks at 16 kHz, labels from the clean signal's voiced spans; calib: 256 chunks of 4 other clips, each with the state the original carries into it",
        prepare=_prepare, infer=_infer, task=_accuracy, task_name="frame accuracy %",
        fidelity=_fidelity, checks=[Fidelity("decision agreement", 0.99)], feeds=_feeds, eval_batch=1)


VAD = _model("silero-vad", "silero_vad/data/silero_vad.onnx",
             "Silero VAD v6 (all weights inside an If on sr: 16k and 8k branches; STFT conv, encoder convs, LSTM cell)")
VAD_OP15 = _model("silero-vad-op15", "silero_vad/data/silero_vad_16k_op15.onnx",
                  "Silero VAD v6, 16 kHz opset-15 export (Ifs on shapes, LSTM weights through Slice)")
