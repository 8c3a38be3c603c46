#!/usr/bin/env python3
"""Train a small vision transformer on Fashion-MNIST and export it to ONNX (``vit_fashion.onnx``).

Architecture (pre-LN ViT): the 28x28 image is cut into 16 patches of 7x7 pixels, each patch (49 values) is
projected to ``--width`` channels, a learned class token is prepended (17 tokens) and learned position
embeddings are added; then ``--depth`` encoder layers, each
``x + Wo(MHSA(LN(x)))`` followed by ``x + fc2(GELU(fc1(LN(x))))`` with ``--heads`` heads and an MLP of
``--mlp-ratio`` x width; a final LayerNorm, the class token, and a linear head to 10 logits.

Data: the Debian package ``dataset-fashion-mnist`` (same files as train_lenet.py); trained on the 60k training
set, measured on ``fashion_eval.npz`` (test images 0..4999, written by train_lenet.py) and the full 10k test set.

The ONNX graph is built by hand with ``onnx.helper`` (opset 17, IR version 8, symbolic batch dimension):
* patch embedding without Gather: Reshape [B,4,7,4,7] -> Transpose -> Reshape [B,16,49] -> Pad one zero row
  in front (the class-token slot) -> MatMul ``patch_embed.weight`` [49,D] -> Add ``tokens.bias`` [17,D]
  (row 0 = class token + position 0, rows 1..16 = patch bias + position i: the same numbers, folded);
* linear layers as MatMul with the weight on the right, stored [in, out] (``*.weight``), then Add ``*.bias``,
  as torch.onnx.export emits nn.Linear on 3-D inputs;
* attention as separate q/k/v projections, Reshape/Transpose to heads, MatMul, Mul by 1/sqrt(d), Softmax,
  MatMul, Transpose/Reshape back, output projection;
* LayerNormalization (opset 17) and the exact, Erf-based GELU: 0.5 * x * (1 + erf(x / sqrt(2))).
* the class token is taken with Gather(index 0, axis 1) on the activations.

Run (about 4 minutes on 2 cores):

    /work/venv-train/bin/python models/train_vit.py     # writes models/vit_fashion.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_lenet import FASHION_DIR, IR_VERSION, OPSET, accuracy, load_fashion, ort_logits, predict, seed_everything, to_float  # noqa: E402

PATCH = 7
GRID = 28 // PATCH          # 4 x 4 patches
TOKENS = GRID * GRID + 1    # 16 patches + class token


class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x):
        b, t, d = x.shape
        h, dh = self.heads, d // self.heads
        y = self.ln1(x)
        q = self.q(y).reshape(b, t, h, dh).transpose(1, 2)
        k = self.k(y).reshape(b, t, h, dh).transpose(1, 2)
        v = self.v(y).reshape(b, t, h, dh).transpose(1, 2)
        att = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(dh)), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, d: int, depth: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.patch_embed = nn.Linear(PATCH * PATCH, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, d * mlp_ratio) for _ in range(depth))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    @staticmethod
    def patches(x):  # [B,784] -> [B,16,49], patches in row-major order, pixels row-major inside a patch
        b = x.shape[0]
        return x.reshape(b, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4).reshape(b, GRID * GRID, PATCH * PATCH)

    def forward(self, x):
        p = self.patch_embed(self.patches(x))
        x = torch.cat([self.cls_token.expand(len(p), -1, -1), p], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x)[:, 0])


def train(model, x_u8, y, *, epochs, lr, weight_decay, batch, seed, log):
    seed_everything(seed)
    x = torch.from_numpy(to_float(x_u8))
    t = torch.from_numpy(y)
    n = len(x)
    steps = epochs * ((n + batch - 1) // batch)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embed" not in name and "token" not in name]
    other = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in name and "token" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot, t0 = 0.0, time.time()
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), t[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        log(f"    epoch {ep + 1:2d}/{epochs}  loss {tot / n:.4f}  ({time.time() - t0:.1f}s)")
    model.eval()
    return model


# --------------------------------------------------------------------------- ONNX export

def _arr(name: str, a) -> TensorProto:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    # np.array, not np.ascontiguousarray: the latter turns 0-d scalars into shape [1]
    return numpy_helper.from_array(np.array(a, dtype=np.int64 if a.dtype.kind == "i" else np.float32, order="C"), name)


def export_onnx(model: ViT, path: Path, d: int, heads: int, doc: str, meta: dict) -> onnx.ModelProto:
    dh = d // heads
    inits, nodes = [], []

    def init(name, a):
        inits.append(_arr(name, a))
        return name

    def node(op, ins, outs, name, **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=name, **attrs))
        return outs[0]

    def linear(prefix, lin: nn.Linear, x):
        # torch.onnx.export style: MatMul with the weight [in, out] on the right, then Add bias.
        w = init(f"{prefix}.weight", lin.weight.T)
        b = init(f"{prefix}.bias", lin.bias)
        y = node("MatMul", [x, w], [f"{prefix}_mm"], f"{prefix}.matmul")
        return node("Add", [y, b], [f"{prefix}_out"], f"{prefix}.add")

    def layernorm(prefix, ln: nn.LayerNorm, x):
        return node("LayerNormalization", [x, init(f"{prefix}.weight", ln.weight), init(f"{prefix}.bias", ln.bias)],
                    [f"{prefix}_out"], prefix, axis=-1, epsilon=float(ln.eps))

    # shapes and constants (0 = copy the batch dimension, so "batch" stays symbolic)
    init("shape.patch_grid", np.array([0, GRID, PATCH, GRID, PATCH], np.int64))
    init("shape.patches", np.array([0, GRID * GRID, PATCH * PATCH], np.int64))
    init("shape.heads", np.array([0, TOKENS, heads, dh], np.int64))
    init("shape.tokens", np.array([0, TOKENS, d], np.int64))
    init("pad.cls", np.array([0, 1, 0, 0, 0, 0], np.int64))
    init("attn.scale", np.array(1.0 / math.sqrt(dh), np.float32))
    init("gelu.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    init("gelu.one", np.array(1.0, np.float32))
    init("gelu.half", np.array(0.5, np.float32))
    init("cls.index", np.array(0, np.int64))

    x = node("Reshape", ["input", "shape.patch_grid"], ["patch_grid"], "patchify.reshape1")
    x = node("Transpose", [x], ["patch_grid_t"], "patchify.transpose", perm=[0, 1, 3, 2, 4])
    x = node("Reshape", [x, "shape.patches"], ["patches"], "patchify.reshape2")
    x = node("Pad", [x, "pad.cls"], ["patches_cls"], "patchify.pad_cls", mode="constant")
    w = init("patch_embed.weight", model.patch_embed.weight.T)
    x = node("MatMul", [x, w], ["patch_embed_mm"], "patch_embed.matmul")
    with torch.no_grad():
        table = model.pos_embed[0].clone()
        table[0] += model.cls_token[0, 0]
        table[1:] += model.patch_embed.bias
    x = node("Add", [x, init("tokens.bias", table)], ["tokens"], "tokens.add")

    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        y = layernorm(f"{p}.ln1", blk.ln1, x)
        q = node("Reshape", [linear(f"{p}.attn.q", blk.q, y), "shape.heads"], [f"{p}.q_heads"], f"{p}.attn.q_reshape")
        k = node("Reshape", [linear(f"{p}.attn.k", blk.k, y), "shape.heads"], [f"{p}.k_heads"], f"{p}.attn.k_reshape")
        v = node("Reshape", [linear(f"{p}.attn.v", blk.v, y), "shape.heads"], [f"{p}.v_heads"], f"{p}.attn.v_reshape")
        q = node("Transpose", [q], [f"{p}.q_t"], f"{p}.attn.q_transpose", perm=[0, 2, 1, 3])   # [B,H,T,dh]
        k = node("Transpose", [k], [f"{p}.k_t"], f"{p}.attn.k_transpose", perm=[0, 2, 3, 1])   # [B,H,dh,T]
        v = node("Transpose", [v], [f"{p}.v_t"], f"{p}.attn.v_transpose", perm=[0, 2, 1, 3])   # [B,H,T,dh]
        s = node("MatMul", [q, k], [f"{p}.scores"], f"{p}.attn.scores")
        s = node("Mul", [s, "attn.scale"], [f"{p}.scores_scaled"], f"{p}.attn.scale")
        a = node("Softmax", [s], [f"{p}.probs"], f"{p}.attn.softmax", axis=-1)
        c = node("MatMul", [a, v], [f"{p}.context"], f"{p}.attn.context")
        c = node("Transpose", [c], [f"{p}.context_t"], f"{p}.attn.context_transpose", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, "shape.tokens"], [f"{p}.context_merged"], f"{p}.attn.merge")
        x = node("Add", [x, linear(f"{p}.attn.o", blk.o, c)], [f"{p}.res1"], f"{p}.residual1")
        y = layernorm(f"{p}.ln2", blk.ln2, x)
        h = linear(f"{p}.mlp.fc1", blk.fc1, y)
        g = node("Mul", [h, "gelu.inv_sqrt2"], [f"{p}.gelu_div"], f"{p}.gelu.scale")
        g = node("Erf", [g], [f"{p}.gelu_erf"], f"{p}.gelu.erf")
        g = node("Add", [g, "gelu.one"], [f"{p}.gelu_add"], f"{p}.gelu.add")
        g = node("Mul", [h, g], [f"{p}.gelu_mul"], f"{p}.gelu.mul")
        g = node("Mul", [g, "gelu.half"], [f"{p}.gelu_out"], f"{p}.gelu.half")
        x = node("Add", [x, linear(f"{p}.mlp.fc2", blk.fc2, g)], [f"{p}.res2"], f"{p}.residual2")

    x = layernorm("ln", model.ln, x)
    x = node("Gather", [x, "cls.index"], ["cls_out"], "cls.gather", axis=1)
    w = init("head.weight", model.head.weight.T)
    x = node("MatMul", [x, w], ["head_mm"], "head.matmul")
    node("Add", [x, init("head.bias", model.head.bias)], ["logits"], "head.add")

    graph = helper.make_graph(
        nodes, "vit_fashion",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="onnxcomp-train_vit", producer_version="1", doc_string=doc)
    m.ir_version = IR_VERSION
    helper.set_model_props(m, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "vit_fashion.onnx")
    ap.add_argument("--fashion-dir", default=FASHION_DIR)
    ap.add_argument("--eval", type=Path, default=HERE / "fashion_eval.npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = bit-reproducible)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-size", type=int, default=60000, help="first N training images (smoke runs)")
    ap.add_argument("--summary", type=Path, default=None)
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    xtr, ytr, xte, yte = load_fashion(args.fashion_dir)
    xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    seed_everything(args.seed)
    model = ViT(args.width, args.depth, args.heads, args.mlp_ratio)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"ViT width {args.width}, depth {args.depth}, heads {args.heads}, mlp x{args.mlp_ratio}: {n_params} parameters")
    train(model, xtr, ytr, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch=args.batch,
          seed=args.seed, log=log)
    train_s = time.time() - t_start

    ev = np.load(args.eval)
    xev, yev = ev["input"], ev["labels"]
    torch_logits = predict(model, torch.from_numpy(xev))
    acc_torch = accuracy(torch_logits, yev)
    acc_test = accuracy(predict(model, torch.from_numpy(to_float(xte))), yte)
    meta = {"dataset": "fashion", "architecture": f"vit_w{args.width}_d{args.depth}_h{args.heads}_mlp{args.mlp_ratio}",
            "eval_file": "fashion_eval.npz", "input_range": "[0,1] = pixels/255", "seed": args.seed}
    doc = (f"Small pre-LN vision transformer (7x7 patches, 17 tokens, width {args.width}, {args.depth} layers, "
           f"{args.heads} heads, MLP x{args.mlp_ratio}, GELU) trained on Fashion-MNIST by models/train_vit.py. "
           "input: [batch,784] float32 pixels/255; output: logits [batch,10].")
    export_onnx(model, args.out, args.width, args.heads, doc, meta)
    onnx_logits = ort_logits(args.out, xev)
    diff = float(np.abs(onnx_logits - torch_logits).max())
    acc_onnx = accuracy(onnx_logits, yev)
    if diff > 1e-4:
        raise SystemExit(f"ONNX/torch mismatch, max abs diff {diff}")
    summary = dict(parameters=n_params, accuracy_onnxruntime=acc_onnx, accuracy_torch=acc_torch, max_abs_diff=diff,
                   full_test_accuracy_torch=acc_test, train_seconds=round(train_s, 1), bytes=args.out.stat().st_size)
    log(json.dumps(summary, indent=1))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
