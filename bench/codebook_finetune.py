"""How much would fine-tuning the shared centroids after compression buy on the zoo? (issue #12, branch ftstudy12)

A STUDY, not part of onnxcomp: it needs torch and onnx2torch, which onnxcomp never imports and which its tests and
CI never install. Run it from a separate venv that has them plus the branch's onnxcomp (docs/benchmarks.md,
"Fine-tuning the codebooks after compression", has the set-up and the commands):

    python3 -m venv .venv-study
    .venv-study/bin/pip install TORCH_CPU_WHEEL ; .venv-study/bin/pip install --no-deps onnx2torch==1.5.15
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > .venv-study/lib/python3.11/site-packages/zz-onnxcomp-venv.pth      # onnxcomp and the zoo's helpers
    nice -n 10 .venv-study/bin/python bench/codebook_finetune.py --model ppocr-cls \
        --compressed ~/.cache/onnxcomp-zoo/runs/RUN/ppocr-cls.onnx --out /tmp/ft

What it does, for each compressed output (an `onnxcomp compress` result: OUT.onnx and its sidecar OUT.onnxcomp):

1. Decompresses it (onnxcomp.decompress: the same weights in standard ONNX ops) and converts that to torch
   (onnx2torch; its NonMaxSuppression and RoiAlign converters import torchvision, whose registry wheel needs CUDA
   libraries and which no zoo model needs: a stub stands in when torchvision cannot be imported).
2. Reads every record (onnxcomp.pipeline.inspection.stored_weights: codebook, indices, outliers, channel scales) and
   finds the torch tensor that holds its decoded values: equal values in the same or the transposed shape, or equal
   up to one factor per output channel (a CodebookConv with a folded BatchNormalization's scale: decompress writes
   W * scale). Each found weight becomes W(c) = codebook c looked up by the FIXED indices (times the fixed channel
   scales; the fixed outliers written over it; the pruned entry 0.0 stays 0.0, so the mask stays fixed).
3. Trains only the codebook entries (Deep Compression, Han, Mao and Dally 2016, section 3.2: a centroid's gradient
   is the sum of the gradients of the weights that share it, which autograd's gather backward computes), optionally
   the biases (``--biases``) and the outlier values (``--outliers``), on the model's calib.npz (no labels): the
   target is the ORIGINAL model's output (onnxruntime), distillation (Hinton, Vinyals and Dean 2015). Loss: KL
   divergence when the output is a probability vector (rows >= 0 summing to 1), else the relative squared error
   sum((y - r)^2) / sum(r^2) per output part (balanced: parts weigh equally, the zoo's detector budgets). A seeded
   quarter of the calibration samples is held back; the codebooks of the epoch with the lowest held-back loss are
   kept (early stop after ``--patience`` epochs without a new best).
4. Writes the fine-tuned codebooks back into a copy of the sidecar (each record re-encoded with
   onnxcomp.core.sidecar.encode_record, same indices, bits, outliers and scales: the record's length must not change,
   so the output has exactly the bytes it had), biases into the ONNX file in their stored dtype, and evaluates
   before and after on the zoo's eval.npz through bench/zoo.py's own `evaluate` and `measure` (onnxcomp's runtime,
   the model's declared checks and tolerances).

Prints one JSON line per compressed output and appends it to OUT/results.jsonl. Two more commands need no torch:

    python bench/codebook_finetune.py table OUT/results.jsonl          # the markdown table of docs/benchmarks.md
    python bench/codebook_finetune.py backward-ops MODEL.onnx ...       # op types a backward pass would need
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import zoo  # noqa: E402  (the package bench/zoo/)

_spec = importlib.util.spec_from_file_location("zoo_cli", HERE / "zoo.py")
zoo_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_cli)

from onnxcomp.core import sidecar  # noqa: E402
from onnxcomp.pipeline.decompression import decompress_model  # noqa: E402
from onnxcomp.pipeline.inspection import stored_weights  # noqa: E402


def import_torch(threads: int):
    import torch
    torch.set_num_threads(threads)
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # onnx2torch imports it for NonMaxSuppression only; no zoo model has that op
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
            stub.__path__ = []  # a package, so `from torchvision.ops import roi_align` resolves
            ops.nms = ops.batched_nms = ops.roi_align = None  # NonMaxSuppression, RoiAlign: in no zoo model
            stub.ops = ops
            sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    import onnx2torch
    return torch, onnx2torch


# ------------------------------------------------------------------------------------------------ outputs

PART = re.compile(r"^(?P<name>[^\[]+)(\[:, *(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def output_parts(model: zoo.ZooModel, graph_outputs: list[str]) -> list[tuple[int, slice]]:
    """(output index, slice on axis 1) of each part the zoo's budget measures: `budget_output` (a name, or a name
    with `[:, a:b]`), else the first output."""
    declared = (model.budget_output,) if isinstance(model.budget_output, str) else model.budget_output
    parts = []
    for text in filter(None, declared):
        match = PART.match(text.strip())
        if not match:
            raise SystemExit(f"{model.name}: budget output {text!r} is not NAME or NAME[:, a:b]")
        start, stop = match["start"], match["stop"]
        cut = slice(int(start) if start else None, int(stop) if stop else None) if match.group(2) else slice(None)
        parts.append((graph_outputs.index(match["name"]), cut))
    return parts or [(0, slice(None))]


def take(array, cut: slice):
    return array if cut == slice(None) else array[:, cut]


def reference_outputs(model: zoo.ZooModel, feeds: dict[str, np.ndarray], parts, batch: int) -> list[np.ndarray]:
    """The original model's parts on every calibration sample (onnxruntime, CPU), float32 arrays [N, ...]."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feeds.values())))
    chunks = [[] for _ in parts]
    for start in range(0, n, batch):
        got = session.run(names, {k: v[start:start + batch] for k, v in feeds.items()})
        for i, (index, cut) in enumerate(parts):
            chunks[i].append(take(np.asarray(got[index], dtype=np.float32), cut))
    return [np.concatenate(c) for c in chunks]


def is_probability(reference: np.ndarray) -> bool:
    sums = reference.reshape(len(reference), -1).sum(-1) if reference.ndim == 2 else None
    return sums is not None and bool((reference >= 0).all()) and bool(np.allclose(sums, 1.0, atol=1e-3))


# ------------------------------------------------------------------------------------------------ weights

class Codebooked:
    """One record's weight as a function of its codebook (and outlier values), matched to a torch tensor."""

    def __init__(self, torch, stored, target: str, orientation: str, channel_scale: np.ndarray | None):
        self.stored, self.target, self.orientation = stored, target, orientation
        codebook = np.asarray(stored.codebook, dtype=np.float32)
        self.fixed = torch.from_numpy(codebook.view(np.uint32) == 0)  # the pruned +0.0 entry stays 0.0: the mask
        self.codebook0 = torch.from_numpy(codebook.copy())
        self.codebook = torch.nn.Parameter(torch.from_numpy(codebook.copy()))
        self.indices = torch.from_numpy(np.asarray(stored.indices, dtype=np.int64).ravel())
        self.positions = torch.from_numpy(np.asarray(stored.outlier_positions, dtype=np.int64))
        self.outliers = torch.nn.Parameter(torch.from_numpy(np.asarray(stored.outlier_values, dtype=np.float32).copy()))
        dims = stored.stored_dims
        self.scales = None
        if stored.scales is not None:
            shape = [1] * len(dims)
            shape[stored.scale_axis] = dims[stored.scale_axis]
            self.scales = torch.from_numpy(np.asarray(stored.scales, dtype=np.float32).reshape(shape))
        self.channel_scale = None if channel_scale is None else torch.from_numpy(
            channel_scale.astype(np.float32).reshape((-1,) + (1,) * (len(dims) - 1)))
        self.torch = torch

    def value(self):
        torch = self.torch
        codebook = torch.where(self.fixed, self.codebook0, self.codebook)
        values = codebook[self.indices].reshape(self.stored.stored_dims)
        if self.scales is not None:
            values = values * self.scales
        if len(self.positions):
            values = values.reshape(-1).index_put((self.positions,), self.outliers).reshape(self.stored.stored_dims)
        if self.stored.transposed:
            values = values.T
        if self.channel_scale is not None:
            values = values * self.channel_scale
        return values.T if self.orientation == "transposed" else values

    def trained_codebook(self) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            return torch.where(self.fixed, self.codebook0, self.codebook).numpy().astype(np.float32)


def match_weights(torch, module, stored: dict) -> tuple[list[Codebooked], list[str]]:
    """Each float32 record matched to the torch parameter or buffer holding its decoded values."""
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    by_size: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.dtype == torch.float32:
            by_size.setdefault(tensor.numel(), []).append(name)
    found, missing, taken = [], [], set()
    for key, weight in stored.items():
        if weight.value_type != sidecar.FLOAT32:
            missing.append(f"{weight.name} (integer record)")
            continue
        dense = weight.dense()
        hit = None
        for name in by_size.get(dense.size, []):
            if name in taken:
                continue
            values = tensors[name].detach().numpy()
            if values.shape == dense.shape and np.array_equal(values, dense):
                hit = (name, "same", None)
            elif values.ndim == 2 and values.shape == dense.T.shape and np.array_equal(values, dense.T):
                hit = (name, "transposed", None)
            elif values.shape == dense.shape and dense.ndim >= 2:
                scale = channel_factor(dense, values)
                if scale is not None:
                    hit = (name, "same", scale)
            if hit:
                break
        if hit is None:
            missing.append(weight.name)
            continue
        taken.add(hit[0])
        found.append(Codebooked(torch, weight, *hit))
    return found, missing


def channel_factor(dense: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """s [C] with values == float32(dense * s[c]) for every output channel c (axis 0), else None."""
    rows_d = dense.reshape(len(dense), -1)
    rows_v = values.reshape(len(values), -1)
    pick = np.abs(rows_d).argmax(1)
    lead = rows_d[np.arange(len(rows_d)), pick]
    scale = np.where(lead != 0, rows_v[np.arange(len(rows_v)), pick] / np.where(lead != 0, lead, 1), 1.0)
    rebuilt = (rows_d * scale[:, None].astype(np.float32)).astype(np.float32)
    return scale.astype(np.float32) if np.allclose(rebuilt, rows_v, rtol=1e-5, atol=1e-30) else None


def bias_parameters(module, matched: set[str]) -> dict:
    """Every 1-D float parameter or buffer named ``*.bias`` that is not a codebook weight."""
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    return {n: t for n, t in tensors.items() if n.endswith("bias") and t.ndim == 1 and n not in matched}


# ------------------------------------------------------------------------------------------------ training

def make_loss(torch, references: list[np.ndarray]):
    kinds = ["kl" if is_probability(r) else "rel_l2" for r in references]

    def loss(outputs, targets):
        total = 0.0
        for kind, y, r in zip(kinds, outputs, targets):
            if kind == "kl":
                total = total + (r * (torch.log(r.clamp_min(1e-12)) - torch.log(y.clamp_min(1e-12)))).sum(-1).mean()
            else:
                total = total + ((y - r) ** 2).sum() / (r ** 2).sum().clamp_min(1e-30)
        return total / len(kinds)
    return loss, kinds


def run_parts(torch, module, overrides: dict, feeds: dict, parts, input_names: list[str]):
    outputs = torch.func.functional_call(module, overrides, tuple(feeds[n] for n in input_names))
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    return [take(outputs[index], cut) for index, cut in parts]


def finetune(torch, module, weights: list[Codebooked], biases: dict, feeds, references, parts, input_names, args, log):
    n = len(references[0])
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(n)
    held = np.sort(order[:max(1, n // 4)])
    fit = np.sort(order[max(1, n // 4):])
    loss_fn, kinds = make_loss(torch, references)
    feeds_t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    refs_t = [torch.from_numpy(r) for r in references]
    groups = []
    for w in weights:
        live = w.codebook0[~w.fixed]
        rms = float(live.pow(2).mean().sqrt()) if live.numel() else 1.0
        groups.append({"params": [w.codebook], "lr": args.lr * rms})
        if args.outliers and len(w.positions):
            groups.append({"params": [w.outliers], "lr": args.lr * float(w.outliers.detach().abs().mean())})
    bias_params = {}
    for name, tensor in biases.items():
        p = torch.nn.Parameter(tensor.detach().clone())
        bias_params[name] = p
        groups.append({"params": [p], "lr": args.lr * max(float(p.detach().pow(2).mean().sqrt()), 1e-3)})
    optimizer = torch.optim.Adam(groups)

    def overrides():
        out = {w.target: w.value() for w in weights}
        out.update(bias_params)
        return out

    def mean_loss(rows):
        total = 0.0
        with torch.no_grad():
            over = overrides()
            for start in range(0, len(rows), args.batch):
                pick = torch.from_numpy(rows[start:start + args.batch])
                outs = run_parts(torch, module, over, {k: v[pick] for k, v in feeds_t.items()}, parts, input_names)
                total += float(loss_fn(outs, [r[pick] for r in refs_t])) * len(pick)
        return total / len(rows)

    def snapshot():
        return ([w.codebook.detach().clone() for w in weights], [w.outliers.detach().clone() for w in weights],
                {k: p.detach().clone() for k, p in bias_params.items()})

    history = [{"epoch": 0, "fit": mean_loss(fit), "held": mean_loss(held)}]
    log(f"  epoch 0: fit {history[0]['fit']:.5g}, held back {history[0]['held']:.5g} (loss {kinds})")
    best, best_state, since = history[0]["held"], snapshot(), 0
    start_time = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        shuffled = rng.permutation(fit)
        for start in range(0, len(shuffled), args.batch):
            pick = torch.from_numpy(np.sort(shuffled[start:start + args.batch]))
            optimizer.zero_grad()
            outs = run_parts(torch, module, overrides(), {k: v[pick] for k, v in feeds_t.items()}, parts, input_names)
            loss = loss_fn(outs, [r[pick] for r in refs_t])
            loss.backward()
            optimizer.step()
        row = {"epoch": epoch, "fit": mean_loss(fit), "held": mean_loss(held)}
        history.append(row)
        mark = ""
        if row["held"] < best:
            best, best_state, since, mark = row["held"], snapshot(), 0, " *"
        else:
            since += 1
        log(f"  epoch {epoch}: fit {row['fit']:.5g}, held back {row['held']:.5g}{mark}")
        if since >= args.patience or time.perf_counter() - start_time > args.max_seconds:
            break
    codebooks, outliers, bias_values = best_state
    with torch.no_grad():
        for w, c, o in zip(weights, codebooks, outliers):
            w.codebook.copy_(c)
            w.outliers.copy_(o)
    return {"history": history, "best_held": best, "kinds": kinds, "fit_samples": len(fit), "held_samples": len(held),
            "seconds": time.perf_counter() - start_time}, {k: v.numpy() for k, v in bias_values.items()}


# ------------------------------------------------------------------------------------------------ write back

def write_back(compressed: Path, out: Path, weights: list[Codebooked], biases_before: dict, biases_after: dict) -> None:
    """out (.onnx) and its sidecar: the compressed files with the trained codebooks (and biases) in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    side_in, side_out = Path(sidecar.sidecar_path(compressed)), Path(sidecar.sidecar_path(out))
    data = bytearray(side_in.read_bytes())
    entries = {e.name: e for e in sidecar.read_directory(str(side_in))}
    for w in weights:
        s = w.stored
        entry = entries[s.name]
        old = bytes(data[entry.offset:entry.offset + entry.length])
        again = encode(s, np.asarray(s.codebook, dtype=np.float32), s.outlier_values)
        if again != old:
            raise SystemExit(f"{s.name}: re-encoding the record as it is does not give its bytes back")
        outliers = w.outliers.detach().numpy().astype(np.float32) if len(s.outlier_values) else s.outlier_values
        record = encode(s, w.trained_codebook(), outliers)
        if len(record) != entry.length:
            raise SystemExit(f"{s.name}: the record's length changed ({entry.length} -> {len(record)} bytes)")
        data[entry.offset:entry.offset + entry.length] = record
    side_out.write_bytes(bytes(data))
    model = onnx.load(str(compressed), load_external_data=False)
    if biases_after:
        changed = set()
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.dims) != 1:
                continue
            stored = numpy_helper.to_array(tensor)
            if stored.dtype.kind != "f":
                continue
            for name, before in biases_before.items():
                if name not in changed and stored.shape == before.shape and np.array_equal(stored.astype(np.float32), before):
                    tensor.CopyFrom(numpy_helper.from_array(biases_after[name].astype(stored.dtype), tensor.name))
                    changed.add(name)
                    break
        missing = sorted(set(biases_after) - changed)
        if missing:
            print(f"  biases not found among the compressed model's initializers (left as they were): {missing}")
    # the record initializers point into the sidecar by its file name, which keeps the output's stem
    onnx.save(model, str(out))


def encode(s, codebook: np.ndarray, outlier_values: np.ndarray) -> bytes:
    return sidecar.encode_record(codebook, np.asarray(s.indices).ravel(), s.stored_dims, s.bits,
                                 s.outlier_positions if len(s.outlier_positions) else None,
                                 outlier_values if len(s.outlier_positions) else None,
                                 scales=s.scales, scale_axis=s.scale_axis, value_type=s.value_type)


def write_dense(compressed: Path, dense_path: Path) -> None:
    """onnxcomp's decompress, but a HardSwish (ONNX opset 14) that decompress writes for a CodebookConv's fused
    activation into a model of an older opset (ppocr-cls, opset 11: onnx's checker refuses it, so
    `onnxcomp decompress` fails) becomes Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5)), its definition; and each
    Constant node of the main graph becomes an initializer (the same values), and trailing omitted inputs ("") are
    dropped (the same node), and nodes are renamed node_0, node_1, ... (onnx2torch makes them Python attribute
    names; onnxcomp's short names include keywords such as `if`)."""
    from onnx import helper
    model = decompress_model(onnx.load(str(compressed), load_external_data=False), str(compressed))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes = []
    for node in model.graph.node:
        value = [a.t for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value:
            # an initializer instead: onnx2torch reads Clip's min / max only from initializers (minilm-l3)
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value[0])
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        elif opset < 14 and node.op_type == "HardSwish" and node.domain in ("", "ai.onnx"):
            gate = f"{node.output[0]}.hardsigmoid"
            nodes += [helper.make_node("HardSigmoid", [node.input[0]], [gate], alpha=1 / 6, beta=0.5),
                      helper.make_node("Mul", [node.input[0], gate], list(node.output))]
        else:
            while node.input and not node.input[-1]:  # an omitted trailing optional input: onnx2torch looks "" up
                node.input.pop()
            nodes.append(node)
    for i, node in enumerate(nodes):  # onnx2torch names modules after nodes; onnxcomp's short names include `if`
        node.name = f"node_{i}"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dense_path))


def stored_bytes(path: Path) -> int:
    side = Path(sidecar.sidecar_path(path))
    return path.stat().st_size + (side.stat().st_size if side.exists() else 0)


# ------------------------------------------------------------------------------------------------ main

def evaluate(model: zoo.ZooModel, path: Path, scratch: Path, timeout: float) -> dict:
    original = zoo_cli.pickle.loads((model.folder / "original.pkl").read_bytes())
    result = zoo_cli.evaluate(model, path, "compressed", scratch / (path.stem + ".eval.pkl"), timeout)
    if "error" in result:
        return {"error": result["error"]}
    measured = zoo_cli.measure(model, original, result)
    return {"fidelity": measured["fidelity"], "task_before": measured["task_before"],
            "task_after": measured["task_after"], "failures": measured["failures"], "pass": not measured["failures"]}


def study(args, compressed: Path, torch, onnx2torch) -> dict:
    model = zoo.BY_NAME[args.model]
    tag = args.tag or compressed.parent.name
    folder = Path(args.out) / f"{model.name}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    log = print
    log(f"{model.name} {tag}: {compressed}")
    with np.load(model.folder / "calib.npz", allow_pickle=False) as f:
        feeds = {k: f[k] for k in f.files}
    if args.samples:
        feeds = {k: v[:args.samples] for k, v in feeds.items()}
    graph = onnx.load(str(model.onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    input_names = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    parts = output_parts(model, outputs)
    references = reference_outputs(model, feeds, parts, args.batch)

    dense_path = folder / "dense.onnx"
    write_dense(compressed, dense_path)
    module = onnx2torch.convert(str(dense_path)).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    stored = stored_weights(onnx.load(str(compressed), load_external_data=False), str(compressed))
    weights, missing = match_weights(torch, module, stored)
    targets = {w.target for w in weights}
    biases = bias_parameters(module, targets) if args.biases else {}
    codebook_scalars = sum(int((~w.fixed).sum()) for w in weights)
    log(f"  {len(weights)} of {len(stored)} records matched ({codebook_scalars} free codebook entries), "
        f"{len(biases)} biases; unmatched: {missing[:6]}{' ...' if len(missing) > 6 else ''}")

    # the torch copy against onnxruntime on the dense model, a few samples
    import onnxruntime
    few = {k: v[:8] for k, v in feeds.items()}
    ort = onnxruntime.InferenceSession(str(dense_path), providers=["CPUExecutionProvider"]).run(None, few)
    with torch.no_grad():
        mine = run_parts(torch, module, {w.target: w.value() for w in weights}, {k: torch.from_numpy(v) for k, v in few.items()},
                         parts, input_names)
    agreement = max(float(np.abs(m.numpy() - take(ort[i], c)).max() / (np.abs(take(ort[i], c)).max() + 1e-30))
                    for m, (i, c) in zip(mine, parts))
    log(f"  torch copy vs onnxruntime (dense model, 8 samples): max |diff| / max |y| = {agreement:.2e}")

    biases_before = {k: v.detach().numpy().copy() for k, v in biases.items()}
    trained, biases_after = finetune(torch, module, weights, biases, feeds, references, parts, input_names, args, log)
    out_path = folder / compressed.name
    write_back(compressed, out_path, weights, biases_before, biases_after)
    before_bytes, after_bytes = stored_bytes(compressed), stored_bytes(out_path)
    original_bytes = model.onnx_path.stat().st_size
    log(f"  bytes {before_bytes} -> {after_bytes}; evaluating ...")
    before = evaluate(model, compressed, folder, args.timeout)
    after = evaluate(model, out_path, folder, args.timeout)
    row = {"model": model.name, "tag": tag, "compressed": str(compressed), "ratio": original_bytes / before_bytes,
           "bytes_before": before_bytes, "bytes_after": after_bytes, "records": len(stored), "matched": len(weights),
           "free_codebook_entries": codebook_scalars, "biases": len(biases), "outliers_trained": bool(args.outliers),
           "torch_vs_ort": agreement, "loss_kinds": trained["kinds"], "fit_samples": trained["fit_samples"],
           "held_samples": trained["held_samples"], "held_loss_before": trained["history"][0]["held"],
           "held_loss_after": trained["best_held"], "epochs": len(trained["history"]) - 1,
           "train_seconds": trained["seconds"], "before": before, "after": after, "lr": args.lr, "batch": args.batch}
    log(json.dumps(row))
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


# The ops with a gradient builder in onnxruntime-training-cpu 1.19.2 (its last release, 2024-09), read from the
# builder class names in its onnxruntime_pybind11_state library (`strings | grep -o 'Get[A-Za-z0-9]*Gradient'`).
ORT_TRAINING_GRADIENTS = set("""Abs Add Sub AveragePool BatchNormalization BiasGelu Cast Clip Concat ConcatTraining Conv
ConvTranspose Cos Div Dropout Erf Exp Expand FastGelu Flatten GRU GatherElements Gather GatherND Gelu Gemm
GlobalAveragePool Identity LSTM LayerNormalization LeakyRelu Log LogSoftmax MatMul MaxPool Min Max Mul Neg Pad Pow
QuickGelu Reciprocal ReduceL2 ReduceLogSumExp ReduceMean ReduceSum Relu Reshape Resize ScatterElements ScatterND
Sigmoid SimplifiedLayerNormalization Sin Slice Softmax Split Sqrt Squeeze Tanh Tile TopK Transpose Trilu Unsqueeze
Where""".split())
# ops whose outputs carry no gradient (shapes, masks, integer results): never on a weight's backward path
NOT_DIFFERENTIABLE = {"Shape", "Size", "Equal", "Not", "Greater", "Less", "ConstantOfShape", "Range", "NonZero",
                      "ArgMax", "ArgMin", "Constant", "Floor", "DynamicQuantizeLinear"}


def backward_ops(path: Path) -> tuple[list[str], list[str]]:
    """(ops on a path from a float weight to an output, those of them without a builder in ORT_TRAINING_GRADIENTS):
    an op is on the path when one of its inputs is a float initializer (or a Constant's value) of more than one
    element or the output of an op on the path, and it is not in NOT_DIFFERENTIABLE; a node holding subgraphs (If)
    counts as one op of its own type."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    live = {t.name for t in graph.initializer if t.data_type in (1, 10, 11, 16) and np.prod(t.dims) > 1}
    live |= {n.output[0] for n in graph.node if n.op_type == "Constant" and any(
        a.name == "value" and a.t.data_type in (1, 10, 11, 16) and np.prod(a.t.dims) > 1 for a in n.attribute)}
    on_path = set()
    for node in graph.node:  # graph order is topological in a valid model
        if node.op_type in NOT_DIFFERENTIABLE:
            continue
        if any(i in live for i in node.input) or node.op_type == "If":
            on_path.add(node.op_type)
            live.update(node.output)
    return sorted(on_path), sorted(on_path - ORT_TRAINING_GRADIENTS)


def fmt_eval(result: dict) -> str:
    if "error" in result:
        return result["error"]
    parts = [f"{k} {v:.3f}" for k, v in result["fidelity"].items() if k not in ("detections",)]
    if result.get("task_before") is not None:
        parts.append(f"task {result['task_before']:.1f} -> {result['task_after']:.1f}")
    return ", ".join(parts)


def table(path: Path) -> str:
    """A markdown table of results.jsonl: one row per fine-tuned output (the last row of each model, tag, variant)."""
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        variant = ("codebooks" + (" + biases" if row["biases"] else "") + (" + outliers" if row["outliers_trained"] else ""))
        rows[(row["model"], row["tag"], variant)] = row
    out = ["| model | output | ratio | trained | held-back loss before -> after (epochs) | eval before | verdict "
           "| eval after | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, tag, variant), r in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[1]["ratio"], kv[0][2])):
        verdict = {True: "pass", False: "**fail**"}
        out.append(f"| {model} | {tag} | {r['ratio']:.2f}x | {variant} ({r['free_codebook_entries']} entries"
                   f"{', %d biases' % r['biases'] if r['biases'] else ''}) | {r['held_loss_before']:.4g} -> "
                   f"{r['held_loss_after']:.4g} ({r['epochs']}) | {fmt_eval(r['before'])} | "
                   f"{verdict.get(r['before'].get('pass'), '-')} | {fmt_eval(r['after'])} | "
                   f"{verdict.get(r['after'].get('pass'), '-')} |")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["table"]:  # no torch needed
        print(table(Path(sys.argv[2]).expanduser()))
        return
    if sys.argv[1:2] == ["backward-ops"]:  # no torch needed
        for path in sys.argv[2:]:
            ops, missing = backward_ops(Path(path).expanduser())
            print(f"{path}: {len(ops)} op types on a weight's path; no ORT training gradient: {', '.join(missing) or '-'}")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="zoo model name (bench/zoo/)")
    parser.add_argument("--compressed", nargs="+", required=True, help="compressed outputs (OUT.onnx, sidecar beside)")
    parser.add_argument("--out", required=True, help="folder for the fine-tuned copies and results.jsonl")
    parser.add_argument("--tag", default="", help="name of this output in the results (default: its folder's name)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam step, times each codebook's RMS")
    parser.add_argument("--biases", action="store_true", help="also train the biases (written back in their dtype)")
    parser.add_argument("--outliers", action="store_true", help="also train the outlier values")
    parser.add_argument("--samples", type=int, default=0, help="use the first N calibration samples only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop training after this long")
    parser.add_argument("--timeout", type=float, default=1200, help="per evaluation")
    args = parser.parse_args()
    torch, onnx2torch = import_torch(args.threads)
    torch.manual_seed(args.seed)
    for path in args.compressed:
        study(args, Path(path).expanduser(), torch, onnx2torch)


if __name__ == "__main__":
    main()
