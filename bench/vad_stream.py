"""Streamed agreement of a compressed silero-vad with the original, on the real-model zoo's evaluation clips.

Each clip (``audioN`` in the zoo's eval.npz) is fed in 512-sample chunks at 16 kHz with the recurrent state carried,
to the original (stock onnxruntime) and to ``onnxcomp compress MODEL OUT`` with default options (the library);
printed: the share of chunks on which both say the same (speech probability > 0.5) and the largest probability
difference. Nothing is downloaded here.

    nice -n 10 python bench/vad_stream.py ~/.cache/onnxcomp-zoo/models/silero-vad [CLIPS]
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import onnxcomp

CHUNK, RATE = 512, 16000


def stream(session, audio: np.ndarray) -> np.ndarray:
    state, probabilities = np.zeros((2, 1, 128), np.float32), []
    for start in range(0, len(audio) - CHUNK + 1, CHUNK):
        out, state = session.run(None, {"input": audio[None, start:start + CHUNK], "state": state,
                                        "sr": np.array(RATE, np.int64)})
        probabilities.append(float(out.reshape(-1)[0]))
    return np.array(probabilities)


def main(argv: list[str]) -> int:
    folder = os.path.expanduser(argv[0])
    clips = int(argv[1]) if len(argv) > 1 else 4
    data = np.load(os.path.join(folder, "eval.npz"))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.onnx")
        onnxcomp.compress(os.path.join(folder, "model.onnx"), out)
        original = ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
        compressed = onnxcomp.InferenceSession(out)
        agree, worst, chunks = 0, 0.0, 0
        for k in range(clips):
            a, b = stream(original, data[f"audio{k}"]), stream(compressed, data[f"audio{k}"])
            agree += int(np.sum((a > 0.5) == (b > 0.5)))
            worst = max(worst, float(np.abs(a - b).max()))
            chunks += len(a)
    print(f"{clips} clips, {chunks} chunks: speech/non-speech agreement {agree / chunks:.2%}, largest probability difference {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
