"""``compress --budget``: per-layer sensitivity analysis, then the smallest allocation within a quality budget.

1. Calibration samples are split: the first part fits everything (statistics, pruning, reconstruction), the
   held-back rest (``holdout`` fraction) only measures quality against the original model.
2. Sensitivity: for each weight and each candidate (sparsity, bits), only that weight is compressed and the
   model's first output on the held-back samples is compared with the original's (the weight is fed as a
   graph input, so one onnxruntime session serves all candidates of a weight). One calibration pass gives
   every layer's statistics. Results are cached in a JSON file keyed by the model, the data and the options,
   written after each weight: an interrupted run resumes with the next weight, and a second run with another
   top-1 or accuracy budget (or the same budget) skips this step; a cosine, rel_l2 or kl budget's value caps
   its curves (``CAP``), so it is part of the key.
   Top-1 and accuracy budgets move in steps of one sample, too coarse to rank candidates: their curves
   measure a smooth stand-in instead (the KL divergence of the softmax outputs for class scores, else the
   relative L2 error; budget.allocation_metric). Most trials are predicted from the layer's own output error
   (_Proxy); where a run on the held-back samples is costly, a weight whose predictions do not hold is measured on
   a fixed subset of them (held_subset).
3. Allocation (onnxcomp/budget.py) assumes errors add up; the chosen model is then compressed for real and
   measured end to end in onnxruntime with the custom ops, in the budget's own metric. The allowed
   (predicted) error is then searched: shrunk on a miss, grown when there is room, bisected between the two
   (at most ``ROUNDS`` trials, ``ROUNDS_SMOOTH`` with a stand-in metric). The search steers by the confidence
   bound on the held-back samples (below), so it keeps finding allocations the check can confirm; every trial
   whose measured error meets the budget there is a candidate for the check. With a budget in the curves' own
   metric, the allocation within SAFE_RUNG x the bisection's largest passing allowed error (the safe rung) and up to
   RUNGS - 1 rungs on a nested path from it to the search's own (budget.nested_path: each switches a few more
   weights to the search's setting) give the check set rungs between a safe allocation and the search's own,
   after PROBES trials above the search's allocation (the bound is not monotone in the allowed error). A weight left dense is a float16
   candidate too where half_dense allows it (one trial model measures their error together).
4. Check: a share of the samples (``check``, drawn first) that neither fit nor steer anything confirms the
   result. The passing allocations (and the data-free default output, _data_free, when it meets the budget at
   its bound on the held-back samples and is smaller than the largest) are tested there, from the largest down,
   first those that met the budget at their bound on the held-back samples, then the others (the data-free output
   by its written size among the allocations' written sizes; one written no smaller than an accepted one is not
   tested), each at its confidence bound (``Z`` standard errors: the Wilson bound of the disagreement rate for top-1,
   the paired flip-count bound for accuracy, edits per character for ctc; budget.error_bound), and the sequence stops at the first miss.
   Testing in an order fixed before the check set is read, each allocation only when every one before it
   passed, keeps the chance of accepting any allocation that misses the budget at that of a single test (the
   fixed-sequence principle of multiple testing, Maurer, Hothorn and Lehmacher 1995), so the margin is paid
   once, however many allocations are tried, and the smallest accepted is written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxcomp.passes import CalibrateWeightsPass, CompressionState, PruneWeightsPass, ReconstructWeightsPass, SelectWeightsPass, ShareWeightsPass
from onnxcomp.passes.base import WeightTarget
from onnxcomp.passes.calibration import BatchStore, bounded_batch, count_samples, run_batched, sample_axes, take_samples

RUN_BATCH = 256  # samples one run of the model takes at most (run_batched's default), fewer by bounded_batch
DOWNSTREAM_BYTES = 512 << 20  # a weight's boundary values (_Downstream) kept in memory at most, per thread; the rest on disk
from onnxcomp.passes.prune_weights import needs_gram
from onnxcomp.passes.apply_settings import index_bits
from onnxcomp.passes.distill_weights import recognise_chain

from onnxcomp.core import budget as budget_math
from onnxcomp.core import obs
from onnxcomp.core.reconstruction import CG_ITERATIONS
from onnxcomp.passes import model_io, share_weights
from onnxcomp import parallel, progress
from onnxcomp.staging import staging_folder, writes_output
from onnxcomp.core import sidecar
from onnxcomp.errors import CalibrationError, OnnxcompError
from onnxcomp.pipeline import budget_output as output_slice
from onnxcomp.pipeline.budget_output import BudgetOutput, Measured
from onnxcomp.pipeline.evaluate import GROUPS, LABELS, check_eval_data, load_calibration, model_specs
from onnxcomp.runtime import quiet_session_options

log = logging.getLogger("onnxcomp")

SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
BITS = (2, 3, 4, 5, 6, 8)
ROUNDS = 6
ROUNDS_SMOOTH = 12  # a geometric search over a stand-in metric needs a few more end-to-end trials
ROUNDS_MEASURED = 3  # counted budgets: trials steered by the measured error after those steered by the bound
CHECK = 0.25  # share of the calibration samples kept apart as the final check set
CHECKS = 8  # passing allocations tried on the check set, in a fixed sequence from the largest down
Z = 1.0  # the safety margin: one standard error (budget.error_bound)
LADDER_STEP = 0.03  # allocations tested on the check set differ in size by at least this fraction
CACHE_VERSION = 14  # 4: records keep outliers (--outliers, default auto); 5: a check set apart; 6: predicted errors; 7: capped;
# 8: the trials' ridge refits by conjugate gradients, row samples of 64K elements; 9: saturated bit widths not tried;
# 10: calibration statistics from sampled positions (calibration.ROW_SAMPLE_POSITIONS); 11 and 12: branches calvgg10
# and cal11a; 13: both: X^T X from at most max(65,536, 16 K) rows a pass (calibration.GRAM_ROWS_PER_FEATURE), uniform
# codebooks matched to k-means (share_weights.MATCHED_UNIFORM; its on/off state is in the key's options too); 14: the
# trials' refits by conjugate gradients as version 8 meant (ReconstructWeightsPass had dropped its iterations: calvgg11).
# Act-order rounding (obs.ACT_ORDER, branch calcnn11) and the proxy's upper envelope (ENVELOPE, branch vgg12) enter the
# key only when on: off, the curves are those of before.
SAFE_RUNG = 0.5  # the check set's first rung: the allocation within this fraction of the error the search settled on
PROBES = (1.5, 2.0)  # after the search, trials at these multiples of the largest allowed error that passed its bound
RUNGS = 4  # rungs between the safe rung and the search's allocation, at geometric steps of the allowed error
DATA_FREE = True  # the data-free default output is a check-set candidate (_data_free)
# Near misses: after every other allocation of the check set's sequence, up to NEAR_MISSES trials that missed the
# budget as measured on the held-back samples by at most NEAR_MISS x its error, each smaller than everything before
# it. The trials compress each weight alone; the allocations the check set tests are compressed sequentially and fit
# on the held-back samples too, so their error on unseen samples can be lower than the trial's (ddddocr-det, run
# s15-cal-det: the 2,296 kB trial measured 0.041 on the held-back captchas, its allocation 0.032 on the check set)
# or higher (silero-vad-op15, cal10x: 0.0115 against 0.0187). The check set decides, tested last in the fixed
# sequence: they cost no margin (an allocation is tested only if every one before it passed), only their compression
# when the sequence reaches them. Off by default (0): not yet measured on a zoo model where the sequence ends on a
# pass (ddddocr-det's run did not finish in branch cal11b), and where every allocation before them is good they are
# the first that can be bad, which the check set at one standard error lets through about one time in six (a long
# shot did so on ppocr-cls with 300 check lines: 0 of 300 changed, 2 of 160 evaluation lines; docs/benchmarks.md).
NEAR_MISS = 1.25
NEAR_MISSES = 0
# Distilled rungs: when the check set's allocations are distilled (--sequential on a fully connected chain:
# DistillWeightsPass), the trials, which compress each weight alone and are not distilled, overstate their error
# (LeNet-300-100 at 35x: +0.7 points without distillation, +0.0-0.3 with it; docs/benchmarks.md, callenet11), so the
# search never proposes what distillation can hold. After every other entry of the check set's sequence, the
# allocations within these multiples of the largest allowed error that met the budget (smaller ones first skipped:
# each at least LADDER_STEP smaller than the entry before it) are tested, largest first, each compressed and distilled
# only when the sequence reaches it. The check set decides as for every entry (same bound, same margin; tested only
# when every entry before passed, so the fixed-sequence principle holds).
DISTILLED_RUNGS = (1.5, 2.0, 3.0, 4.0)
# rel_l2 curves: the weights' errors add up as squares when allocating (budget.QUADRATURE; before branch cal11b as
# they are, which overstated the trials' measured error 3-5x on the zoo's detectors)
QUADRATURE = True
# The tensors no curve covers (biases, normalisation scales, weights below --min-elements) are stored as float16 in the
# allocations the check set tests, where half_dense's rules allow, as the data-free default stores them (before, they
# stayed float32: 11.4 of the 323.9 kB of magika's output in branch calzoo6). Their error,
# at most 2^-11 relative per value, is not in the curves or the trials: the check set measures it with the rest.
FLOAT16_OTHERS = True
HALF_BITS = 16  # a curve candidate (None, HALF_BITS, ...): the weight left dense, stored as float16
# Codebook sizes between two bit widths (in_between_sizes): a k-means codebook of K entries, 2^b < K < 2^(b + 1),
# costs about the entropy of its entropy-coded indices, a rate between b and b + 1 bits, so the allocation need not
# jump a whole bit on a weight that holds much of the model (MiniLM-L3's word embedding: 64 % of its calibrated
# bytes, 1.46 MB between 3 and 4 bits). Measured on the weights holding at least BETWEEN_SHARE of the curves' dense
# bytes (in_between_weights), at each sparsity between two bit widths both tried there. Off by default
# (ONNXCOMP_BETWEEN_SIZES=1 turns them on): even with a point on the line between its neighbours (no_better_than_between)
# for every weight, the allocation's bytes at the search's allowed errors fell by at most 1.1 % (minilm-l3), 3.7 %
# (silero-vad), 4.5 % (ddddocr-ocr), 7.9 % (magika), and the written outputs moved both ways with the check set's
# draw: silero-vad 9.46x -> 8.79x, minilm-l3 8.07x -> 8.07x / 7.34x, ddddocr-ocr 7.73x -> 8.39x, magika 10.60x ->
# 12.31x with 2 of 64 evaluation files changed instead of 1 (both fail its evaluation; docs/benchmarks.md, calk11).
BETWEEN = os.environ.get("ONNXCOMP_BETWEEN_SIZES", "") == "1"
BETWEEN_SHARE = 0.1
BETWEEN_VERSION = 2  # the in-between points' cache: its rule (in_between_sizes) and what they are measured with (2: measured)
CAP = 4.0  # sensitivity: past a (sparsity, bits) whose error exceeds CAP x the budget, higher sparsities at those bits are not tried
SATURATION = 0.7  # sensitivity: at a sparsity above 0, once one more bit leaves more than this fraction of the error, the
# higher bit widths at that sparsity are not tried (the pruning error dominates: _measure)


def _data_free(input_path: str, output_path: str, budget_on: Measured, hold: dict, reference: np.ndarray, labels, goal, seed: int,
               min_elements: int, eval_data, fidelity_options: dict, run_size: int = RUN_BATCH):
    """The data-free default output (``compress`` without calibration; its back-off measured on ``hold``, the
    held-back samples) as a check-set candidate (settings, bytes, predicted None, measured error, its bound,
    (staging folder, staged path, report)), or None when it does not meet the budget at its confidence bound on ``hold``, is a copy of
    the input, or cannot be written (then it is only not a candidate: the search's own allocations stand)."""
    from onnxcomp.pipeline.compression import compress
    from onnxcomp.runtime import InferenceSession
    staging = staging_folder(output_path)
    staged = os.path.join(staging, os.path.basename(output_path))
    with _removed_on_error(staging):
        try:
            with progress.silenced():
                report = compress(input_path, staged, seed=seed, min_elements=min_elements, eval_data=eval_data,
                                  **{**fidelity_options, "fidelity_data": hold})
        except OnnxcompError as error:
            log.info("the data-free allocation is not a candidate: %s", error)
            report = None
        if report is None or report.fallback or not report.layers:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        output = budget_on.combine(run_batched(InferenceSession(staged), hold, run_size, outputs=budget_on.names))
    measured = budget_math.error(goal.metric, reference, output, labels)
    bound = budget_math.error_bound(goal.metric, reference, output, labels, Z)
    progress.messages()(f"data-free allocation: measured {goal.metric} {measured:.4g} (bound {bound:.4g}), "
                        f"{report.output_bytes} bytes")
    if not goal.met(bound):
        shutil.rmtree(staging, ignore_errors=True)
        return None
    settings = {layer.name: {"sparsity": layer.sparsity, "bits": layer.bits} for layer in report.layers}
    return settings, report.output_bytes, None, measured, bound, (staging, staged, report)


def holdout_split(count: int, held: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-back rows): a seeded random split, each part in file order. Random, not the last ones:
    calibration files are often sorted (by class, by source)."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


@contextlib.contextmanager
def _removed_on_error(folder: str):
    """Remove ``folder`` (a staging folder) if the block raises, then re-raise: no partial output stays behind."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def budget_split(count: int, held: int, checked: int, seed: int = 0,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit rows, held-back rows, check rows), disjoint, each in file order: the check rows are drawn first
    (seeded, ``seed + 1``), the other two split the rest as ``holdout_split``.

    ``groups`` (one id per sample, [count], the calibration file's ``groups`` array) draws whole groups instead:
    the check set takes groups in a seeded order (``seed + 1``) while they fit within ``checked`` samples (the
    first always), the held-back samples likewise from the other groups (``seed``) within ``held``, and the fit
    keeps the rest, so no group is split between the three and the check set measures sources the search never
    saw. ``CalibrationError`` when fewer than three groups (two with ``checked`` 0) leave a part empty."""
    if groups is None:
        order = np.random.default_rng(seed + 1).permutation(count)
        check, rest = np.sort(order[:checked]), np.sort(order[checked:])
        fit, hold = holdout_split(len(rest), held, seed)
        return rest[fit], rest[hold], check
    ids, member = np.unique(groups, return_inverse=True)
    sizes = np.bincount(member, minlength=len(ids))
    left = np.arange(len(ids))
    parts = []
    for target, part_seed in ((checked, seed + 1), (held, seed)):
        taken, total = [], 0
        for group in left[np.random.default_rng(part_seed).permutation(len(left))] if target > 0 else []:
            if not taken or total + sizes[group] <= target:
                taken.append(group)
                total += sizes[group]
        left = np.setdiff1d(left, taken)
        parts.append(np.flatnonzero(np.isin(member, taken)))
    if not len(left):
        raise CalibrationError(f"{len(ids)} calibration groups are too few to keep whole groups apart for the check set and "
                               f"the held-back samples: give at least {2 + (checked > 0)} groups, or --check 0")
    check, hold = parts
    return np.flatnonzero(np.isin(member, left)), hold, check


def _session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """A plain onnxruntime session on ``model`` (``threads``: intra-op threads, 0 = onnxruntime's default)."""
    options = quiet_session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _weight_as_input(model: onnx.ModelProto, names: str | Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph initializers ``names`` (one name or several) are graph inputs.
    The moved initializers are never copied (a whole-model copy would copy the largest weights only to drop
    them): the same proto as ``_weight_as_input_reference`` makes, field for field (tests/test_fast_paths.py)."""
    wanted = {names} if isinstance(names, str) else set(names)
    probe = onnx.ModelProto()
    _copy_fields(model, probe, skip="graph")
    _copy_fields(model.graph, probe.graph, skip="initializer")
    probe.graph.initializer.extend(t for t in model.graph.initializer if t.name not in wanted)
    listed = {value.name for value in probe.graph.input}  # initializers some models also list as inputs
    for tensor in model.graph.initializer:
        if tensor.name in wanted and tensor.name not in listed:
            probe.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return probe


def _copy_fields(source, target, skip: str) -> None:
    """Every set field of the protobuf message ``source`` but ``skip`` copied into the empty ``target`` (same type;
    fields unknown to this onnx's schema at that level are not copied: onnxruntime, the probes' only reader, ignores
    them too)."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if descriptor.is_repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _weight_as_input_reference(model: onnx.ModelProto, names: str | Iterable[str]) -> onnx.ModelProto:
    """The straightforward ``_weight_as_input``: the whole model copied, then the initializers removed."""
    wanted = {names} if isinstance(names, str) else set(names)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {value.name for value in probe.graph.input}
    for tensor in [t for t in probe.graph.initializer if t.name in wanted]:
        if tensor.name not in listed:
            probe.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        probe.graph.initializer.remove(tensor)
    return probe


def _weight_output_first(model: onnx.ModelProto, name: str | list[str] | None = None) -> Measured:
    """Put the output the budget measures first among ``model``'s outputs (in place; this copy is only measured, the
    output is compressed from the file as given) and return what it measures. ``name``: that output
    (``--budget-output``, the one the application reads, e.g. a pooled sentence embedding listed after the token
    embeddings), or a slice of it on one axis, ``NAME[SLICE]`` (e.g. a detector's scores, ``output[..., 4:6]``;
    onnxcomp/pipeline/budget_output.py), which a ``Slice`` node appended to ``model`` computes as its new first
    output; or a list of several such parts, whose flattened float64 copies are listed first until
    ``budget_output.balance`` joins them (compress_to_budget, once the held-back samples give their scales). Each
    must depend on a weight. Without ``name`` the budget measures the first output, or when that one depends on no
    weight (an Identity of an input, as the zoo's MiniLM-L3 export lists first, whose error is 0 whatever is
    compressed) the first output that does, and says so. A node with a subgraph counts as reading weights (its
    bodies may hold their own). A written model is run on the returned ``Measured``'s ``names`` and measured
    through its ``combine``.

    Raises OnnxcompError when a name is not an output of the model, its slice is malformed (budget_output.parse,
    add_slice), or it depends on no weight (every allocation would measure an error of 0)."""
    from onnxcomp.passes.calibration import names_read
    graph = model.graph
    tainted = {t.name for t in graph.initializer}
    for node in graph.node:  # graph order is topological
        has_body = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_body or names_read(node) & tainted:
            tainted.update(o for o in node.output if o)
    outputs = list(graph.output)
    if name is not None:
        texts = [name] if isinstance(name, str) else list(name)
        measured = Measured([output_slice.parse(text, [o.name for o in outputs]) for text in texts])
        for part in measured.parts:
            if part.name not in tainted:
                raise OnnxcompError(f"--budget-output {part.text!r} depends on no weight: every allocation would "
                                    "measure an error of 0; name the output your application reads")
        if len(measured.parts) > 1:
            output_slice.add_parts(model, measured)
            return measured
        chosen = measured.parts[0]
        moved = output_slice.add_slice(model, chosen) if chosen.sliced else \
            next(o for o in outputs if o.name == chosen.name)
    else:
        if outputs[0].name in tainted:
            return Measured([BudgetOutput(outputs[0].name, outputs[0].name)])
        moved = next((o for o in outputs if o.name in tainted), None)
        if moved is None:
            return Measured([BudgetOutput(outputs[0].name, outputs[0].name)])
        progress.messages()(f"the first output {outputs[0].name!r} depends on no weight: the budget measures output "
                            f"{moved.name!r}, the first that does")
        measured = Measured([BudgetOutput(moved.name, moved.name)])
    del graph.output[:]
    graph.output.extend([moved] + [o for o in outputs if o is not moved])
    return measured


def _pruned(target: WeightTarget, sparsity: float, options: dict, as_compress: bool = False,
            iterations: int = 0) -> WeightTarget:
    """``target`` pruned (and reconstructed) alone at ``sparsity`` with the pipeline's own passes; sparsity 0 skips
    pruning unless ``as_compress`` (then the pruning pass runs as ``compress`` runs it, keeping a mask).
    ``iterations`` > 0: the costly ridge refits solved by at most that many conjugate-gradient steps
    (reconstruction.refit_rows; the sensitivity trials' estimate), not exactly."""
    trial = dataclasses.replace(target, keep=None, codebook=None, indices=None, refit=None, record=None,
                                sparsity_override=sparsity, bits_override=None)
    state = CompressionState(None, [trial])
    PruneWeightsPass(method=options["prune"] if sparsity > 0 or as_compress else "none", score=options["score"])(state)
    if options["reconstruct"] and trial.keep is not None:
        ReconstructWeightsPass(ridge=options["ridge"], iterations=iterations)(state)
    return trial


def _shared(pruned: WeightTarget, bits: int, options: dict, codebook_size: int = 0) -> WeightTarget:
    """A pruned target's codebook and record at ``bits`` (``codebook_size`` > 0: at most that many entries, a codebook
    size between bit widths, ``bits`` its index bits)."""
    trial = dataclasses.replace(pruned, codebook=None, indices=None, record=None, bits_override=bits,
                                codebook_size_override=codebook_size)
    ShareWeightsPass(bits=bits, init=options["init"], seed=options["seed"], refit_codebook=options["reconstruct"],
                     rounding=options["rounding"], outliers=options.get("outliers", "auto"),
                     matched_uniform=options.get("matched_uniform", share_weights.MATCHED_UNIFORM))(
        CompressionState(None, [trial]))
    bits_needed = max(1, int(np.ceil(np.log2(max(len(trial.codebook), 2)))))
    trial.record = sidecar.encode_record(trial.codebook, trial.indices, trial.shape, bits_needed,
                                         trial.outlier_positions, trial.outlier_values)
    return trial


def _setting(candidate) -> dict:
    """A curve's candidate (sparsity, bits, bytes, error[, codebook size]) as a compress setting: sparsity None is the
    weight left dense, as float32 or (bits HALF_BITS) as float16; a fifth entry K > 0 is a codebook of K entries
    between two bit widths (``bits`` = its index bits, ceil(log2 K))."""
    sparsity, bits = candidate[0], candidate[1]
    if sparsity is None:
        return {"skip": True, "float16": True} if bits == HALF_BITS else {"skip": True}
    if len(candidate) > 4 and candidate[4]:
        return {"sparsity": sparsity, "bits": bits, "codebook_size": candidate[4]}
    return {"sparsity": sparsity, "bits": bits}


def _halvable(model: onnx.ModelProto, names: Iterable[str]) -> set[str]:
    """Those of ``names`` (weights) that the writer stores as float16 when left dense: half_dense's own rules run on a
    copy of ``model``."""
    from onnxcomp.passes.half_dense import halve_dense_weights
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return {name for name, _ in halve_dense_weights(copy, set(names))}


def _with_float16(curves: dict, halvable: set[str], error: float) -> dict:
    """``curves`` with a float16 candidate (None, HALF_BITS, half the dense bytes, its error) for each weight of
    ``halvable``. ``error`` is the measured error of the model with all of them float16 at once, shared out in
    proportion to each weight's most accurate unpruned codebook's error (its sensitivity: binary16's relative
    rounding error, 2^-11, is about the same fraction of any weight's 8-bit codebook error), or to the weights'
    sizes when none has an error above 0, so the allocation's sum over all of them predicts it exactly."""
    finest = {n: min((p[3] for p in curves[n] if p[0] == 0.0), default=0.0) for n in halvable}
    shares = finest if sum(finest.values()) > 0 else {n: float(curves[n][-1][2]) for n in halvable}
    total = sum(shares.values()) or 1.0
    return {n: points + [(None, HALF_BITS, points[-1][2] // 2, max(error, 0.0) * shares[n] / total)] if n in halvable
            else points for n, points in curves.items()}


@progress.with_progress
@writes_output
def compress_to_budget(input_path: str, output_path: str, *, budget: str, calib: str, calib_samples: int | None = None,
                       holdout: float = 0.25, check: float = CHECK, sparsities=SPARSITIES, bits=BITS, cache_dir: str | None = None,
                       prune: str = "magnitude", score: str = "wanda", reconstruct: bool = True, ridge: float = 1e-2,
                       rounding: str = "obs", sequential: bool = False, outliers: str | float = "auto",
                       init: str = "quantile", seed: int = 0, min_elements: int = 1024, eval_data: str | None = None,
                       budget_output: str | list[str] | None = None, keep_names: bool = False, distill: bool | None = None,
                       **fidelity_options):
    """Compress ``input_path`` to the smallest allocation found that meets ``budget`` (e.g. "top1=0.99").

    ``sequential`` compresses the allocations tested on the check set (and so the output) layer by layer, each
    layer fit to the compressed ones before it; the sensitivity curves and the search's trials are still
    compressed one weight at a time (the trials' errors then tend to overstate the sequential model's, so the
    search steers on the safe side, and the check set measures what is written).

    ``check`` (a fraction of the calibration samples, drawn first) is a final check set the search never sees;
    the output is fit on the other samples and written only if it meets the budget on the check set too, at a
    confidence bound (``Z`` standard errors, budget.error_bound; the allocations that passed the search, and
    the data-free default output when it passed on the held-back samples, are tested there in a fixed order, from
    the largest down by written size, those that met the bound on the held-back samples first, stopping at the first
    miss; the smallest accepted is written), so a budget met here holds on unseen data of the same kind.

    ``budget_output`` names the output the budget measures (default: the first output that depends on a weight,
    _weight_output_first), a slice of one (``NAME[SLICE]``), or several such parts, measured balanced (each scaled by
    1 / its RMS on the held-back samples; rel_l2 and cosine budgets only; onnxcomp/pipeline/budget_output.py); the
    written model keeps its outputs as given.

    ``progress=callback`` receives the progress of the long steps (onnxcomp/progress.py); ``fidelity_options`` hold the fidelity options of ``compress`` (fidelity, min_cosine, fidelity_data, input_shapes, input_ranges) for the output; ``keep_names`` is compress's (every output written keeps the input's node and tensor names)."""
    from onnxcomp.core.outliers import parse_option
    from onnxcomp.pipeline.compression import compress, refuse_compressed
    goal = budget_math.parse_budget(budget)
    outliers = parse_option(outliers)
    if not calib:
        raise CalibrationError("--budget needs calibration data to measure quality: pass --calib DATA.npz")
    if not 0 < holdout < 1:
        raise OnnxcompError(f"holdout {holdout} must be a fraction in (0, 1)")
    if not 0 <= check < 1 or holdout + check >= 1:
        raise OnnxcompError(f"check {check} must be a fraction in [0, 1) leaving samples to fit (holdout {holdout} + check < 1)")
    model_io.check_output_path(input_path, output_path)
    model = model_io.load_model(input_path)
    refuse_compressed(model, input_path)
    if eval_data:
        check_eval_data(eval_data, model)
    model_io.constants_to_initializers(model.graph)
    budget_on = _weight_output_first(model, budget_output)
    if len(budget_on.parts) > 1 and goal.metric not in ("rel_l2", "cosine"):
        raise OnnxcompError(f"several --budget-output parts ({budget_on.text}) are measured together by a rel_l2 or "
                            f"cosine budget, not {goal.metric}")
    data = load_calibration(calib, model, calib_samples, seed, keep_labels=goal.metric == "accuracy", keep_groups=True)
    all_labels = data.pop(LABELS, None)
    groups = data.pop(GROUPS, None)
    if goal.metric == "accuracy" and all_labels is None:
        raise CalibrationError("an accuracy budget needs an array 'labels' in the calibration data")
    axes = sample_axes(model_specs(model))
    count = count_samples(data, axes)
    held = max(1, int(round(holdout * count)))
    checked = int(round(check * count)) if check > 0 else 0
    if check > 0 and checked < 1 or count - held - checked < 1:
        raise CalibrationError(f"{count} calibration samples are too few to hold some back and keep a check set: give at "
                               f"least {2 + (check > 0)}, or --check 0")
    fit_rows, hold_rows, check_rows = budget_split(count, held, checked, seed, groups)
    if groups is not None:  # whole groups: the parts' sizes are what they took
        held, checked = len(hold_rows), len(check_rows)
        progress.messages()(f"calibration groups ({len(np.unique(groups))}) kept whole: {len(fit_rows)} samples fit, "
                            f"{len(hold_rows)} held back, {len(check_rows)} in the check set")
    fit = take_samples(data, fit_rows, axes)
    hold = take_samples(data, hold_rows, axes)
    searched = take_samples(data, np.sort(np.concatenate([fit_rows, hold_rows])), axes)
    checking = take_samples(data, check_rows, axes)
    labels = None if all_labels is None else all_labels[hold_rows]
    check_labels = None if all_labels is None else all_labels[check_rows]
    # one run's samples: fewer than RUN_BATCH when their values would take more than calibration.ACTIVATION_BYTES
    run_size = bounded_batch(model, searched, axes, RUN_BATCH)
    if len(budget_on.parts) > 1:  # each part scaled by 1 / its RMS on the held-back samples, then joined
        flats = run_batched(_session(model), hold, run_size, outputs=[o.name for o in model.graph.output[:len(budget_on.parts)]])
        output_slice.balance(model, budget_on, flats)
        reference = budget_on.join(flats)  # what the joined model computes on the same samples: no second run
    else:
        reference = run_batched(_session(model), hold, run_size)[0]
    metric = budget_math.allocation_metric(goal.metric, reference)

    options = dict(prune=prune, score=score, reconstruct=reconstruct, ridge=ridge, init=init, seed=seed, rounding=rounding,
                   outliers=outliers, matched_uniform=share_weights.MATCHED_UNIFORM)  # (in the cache key: curves change)
    # A budget measured in its own metric bounds what any one weight may cost: no allocation the search tries puts
    # more than CAP times the whole budget on one weight (the allowed error grows from the budget by steps of 2,
    # and only while the summed predictions overstate the measured error), so the sensitivity analysis stops
    # raising a weight's sparsity at a given bit width once its error passes that (errors grow with sparsity).
    # A stand-in metric (top1 and accuracy budgets) has no such scale: its curves are not capped.
    cap = CAP * goal.max_error if metric == goal.metric and goal.max_error > 0 else None
    # the spread weights' trials on some held-back samples where a run on all of them is costly (held_subset)
    subset = held_subset(model, hold, reference, labels, axes, seed)
    key = hashlib.sha256(json.dumps([CACHE_VERSION, options, min_elements, list(sparsities), list(bits), metric, holdout,
                                     check, count, cap] + ([f"act_order={obs.ACT_ORDER}"] if obs.ACT_ORDER else [])
                                    + (["envelope"] if ENVELOPE else [])
                                    + ([f"held_subset={len(subset[1])}"] if subset is not None else []),
                                    sort_keys=True).encode())
    key.update(model.SerializeToString(deterministic=True))
    for name in sorted(data):
        key.update(np.ascontiguousarray(data[name]).tobytes())
    if groups is not None:  # the groups decide the split, and so the curves
        key.update(np.ascontiguousarray(np.concatenate([hold_rows, check_rows])).tobytes())
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "onnxcomp")
    cache_file = os.path.join(cache_dir, f"sensitivity-{key.hexdigest()[:32]}.json")
    cached = _load_cache(cache_file) or {}
    if cached:
        progress.messages()(f"{len(cached)} sensitivity curves from the cache {cache_file}")
    # The in-between codebook sizes' points go to a file of their own, keyed by this one's key and their rule: the
    # 2^b points' file stays what a run without them reads and writes (BETWEEN off, or main before branch calk11).
    between_key = hashlib.sha256(json.dumps([key.hexdigest(), BETWEEN_VERSION, BETWEEN_SHARE]).encode()).hexdigest()
    between_file = os.path.join(cache_dir, f"sensitivity-between-{between_key[:32]}.json")
    cached_between = (_load_cache(between_file) or {}) if BETWEEN else {}

    def save(done: dict, in_between: set) -> None:
        _save_cache(cache_file, {n: [p for p in points if len(p) == 4] for n, points in done.items()})
        if in_between:
            _save_cache(between_file, {n: [p for p in done[n] if len(p) > 4] for n in done if n in in_between})
    # each weight's curve is cached as soon as it is measured, so an interrupted run resumes where it stopped
    calibrated: dict = {}  # the curves' calibration pass, handed to the trial models (the same statistics: one pass)
    curves = _measure(model, fit, hold, reference, labels, metric, sparsities, bits, options, min_elements,
                      cached, save, cap, calibrated, run_size, cached_between, subset)
    curves = {n: no_better_than_between(points) if any(len(p) > 4 for p in points) else points for n, points in curves.items()}
    trials = None

    def trial_models() -> _TrialModels:
        return _TrialModels(model, fit, options, min_elements, model_io.model_bytes(input_path), calibrated or None,
                            run_size)
    # A weight left dense costs half as much as float16 (ppocr-rec: 24 weights left dense as float32 were 3.9 of the
    # 5.2 MB written at 2.11x). One trial model with every weight float16 that half_dense allows measures what they
    # cost together; each gets a float16 candidate with its share of that error (_with_float16).
    halvable = _halvable(model, curves)
    half_error = None
    if halvable:
        trials = trial_models()
        halved, _ = trials.run({n: {"skip": True, "float16": True} for n in halvable}, hold)
        half_error = budget_math.error(metric, reference, halved, labels)
        progress.messages()(f"{len(halvable)} weights stored as float16 when left dense: {metric} {half_error:.4g} all at once")
        curves = _with_float16(curves, halvable, half_error)

    # Search the allowed (predicted) error: errors rarely add up exactly, so shrink it when the real model
    # misses the budget and grow it when the real model leaves room, bisecting between the two (geometrically
    # when the curves use a smooth stand-in metric, whose scale the budget does not give).
    smooth = metric != goal.metric
    allowed, passed_at, failed_at = goal.max_error, None, None
    passing: dict[tuple, tuple] = {}
    history = []
    tried: dict[tuple, tuple[float, int]] = {}
    # Two phases for budgets counted in samples: first the search steers by the confidence bound, so it finds
    # allocations the check can confirm; then a few more trials steer by the measured error, between the
    # largest allowed error that met the budget so measured and the smallest that missed it, so the check also
    # gets candidates smaller than the bound dared (it decides, stopping at the first miss).
    counted = goal.metric in budget_math.COUNTED
    # the check set's allocations are distilled (DistillWeightsPass: --sequential on a fully connected chain)
    distilling = sequential and distill is not False and not isinstance(recognise_chain(model), str)

    def try_allowed(allowed: float, phase: str) -> tuple[float, float] | None:
        """The allocation within ``allowed`` (predicted), run as a trial model on the held-back samples once:
        (measured error, its confidence bound), or None when no allocation is predicted within it (try_choice)."""
        choice = budget_math.allocate(additive_points(), adding(allowed))
        return None if choice is None else try_choice(choice, allowed, phase)

    def try_choice(choice: dict, allowed: float, phase: str) -> tuple[float, float]:
        """The allocation ``choice`` (weight -> index of its curve's candidate) run as a trial model on the held-back
        samples once: (measured error, its confidence bound). An allocation that meets the budget as measured
        joins the candidates for the check set."""
        nonlocal trials
        settings = {n: _setting(curves[n][i]) for n, i in choice.items()}
        predicted = predicted_error(choice.items())
        key = tuple(sorted(choice.items()))
        if key not in tried:
            # each weight compressed once per setting over all rounds, the model run in onnxruntime; in
            # sequential mode too (a whole sequential compress per round cost 15-30 s on a 0.5 MB CNN): the
            # allocations the check set tests, and the output, are compressed sequentially
            trials = trials or trial_models()
            output, output_bytes = trials.run(settings, hold)
            measured = budget_math.error(goal.metric, reference, output, labels)
            bound = budget_math.error_bound(goal.metric, reference, output, labels, Z)
            tried[key] = (measured, bound, output_bytes)
            history.append({"allowed": allowed, "predicted": predicted, "measured": measured, "bound": bound,
                            "bytes": output_bytes, "steered_by": phase})
            progress.messages()(f"allocation within {allowed:.4g}: predicted {metric} {predicted:.4g}, measured "
                                f"{goal.metric} {measured:.4g}, {output_bytes} bytes")
        measured, bound, size = tried[key]
        if goal.met(measured):  # a candidate for the check set, which decides (below)
            passing[key] = (settings, size, predicted, measured, bound)
        return measured, bound

    # The weights' predicted errors add up in the allocation metric's additive units (budget.additive: squares for
    # rel_l2, QUADRATURE above); the allowed and predicted errors stay in the metric's own.
    adds = metric if QUADRATURE else None  # None: summed as they are

    def adding(error: float) -> float:
        return budget_math.additive(adds, error)

    def additive_points() -> dict:
        return {n: [(c[2], adding(c[3])) for c in cands] for n, cands in curves.items()}

    def predicted_error(choice) -> float:
        """The model's predicted error of an allocation ((weight, candidate index) pairs)."""
        return budget_math.combined(adds, [curves[n][i][3] for n, i in choice])

    def near_misses(tried: dict, smallest: int) -> list[tuple]:
        """Up to NEAR_MISSES trials that missed the budget as measured on the held-back samples by at most NEAR_MISS x
        its error, each at least LADDER_STEP smaller than ``smallest`` (the smallest allocation before them) and than
        the one before it, from the largest down: the check set's last entries (NEAR_MISS above)."""
        picked = []
        for key, (measured, bound, size) in sorted(tried.items(), key=lambda item: (-item[1][2], item[0])):
            if goal.met(measured) or measured > NEAR_MISS * goal.max_error or len(picked) == NEAR_MISSES:
                continue
            if size < (picked[-1][1] if picked else smallest) * (1 - LADDER_STEP):
                picked.append(({n: _setting(curves[n][i]) for n, i in key}, size,
                               predicted_error(key), measured, bound))
        return picked

    def estimated_bytes(choice) -> int:
        """An allocation's output bytes as a trial model estimates them (_TrialModels.run), from its curves alone: the
        input's bytes with each weight's dense float32 bytes (its dense candidate's) replaced by its candidate's."""
        size = model_io.model_bytes(input_path)
        for n, i in choice.items():
            dense = max(c[2] for c in curves[n] if c[0] is None and c[1] != HALF_BITS)
            size += curves[n][i][2] - dense
        return size

    def distilled_rungs(smallest: int) -> list[tuple]:
        """With distillation (DISTILLED_RUNGS above): the allocations within DISTILLED_RUNGS x the largest allowed error
        that met the budget, each at least LADDER_STEP smaller than ``smallest`` and than the one before it, from the
        largest down, with no held-back measurement (None): the check set's last entries."""
        if passed_at is None:
            return []
        picked, points = [], additive_points()
        for factor in DISTILLED_RUNGS:
            choice = budget_math.allocate(points, adding(passed_at * factor))
            if choice is None:
                continue
            size = estimated_bytes(choice)
            if size < (picked[-1][1] if picked else smallest) * (1 - LADDER_STEP):
                picked.append(({n: _setting(curves[n][i]) for n, i in sorted(choice.items())}, size,
                               predicted_error(choice.items()), None, None))
        return picked

    for phase, rounds in (("bound", ROUNDS_SMOOTH if smooth else ROUNDS), ("measured", ROUNDS_MEASURED if counted else 0)):
        if phase == "measured" and not rounds:
            # no trials steered by the measured error (a budget in the curves' own metric): the probes and rungs hang
            # from the largest allowed error that met the bound, or, when none did, from the largest that met the
            # budget as measured (before, always the latter: silero-vad's rungs led to an allocation whose bound
            # on the held-back samples, 0.0248, missed 0.02)
            if passed_at is None:
                passed_at = max((h["allowed"] for h in history if goal.met(h["measured"])), default=None)
            break
        if phase == "measured":
            passed_at = max((h["allowed"] for h in history if goal.met(h["measured"])), default=None)
            failed_at = min((h["allowed"] for h in history if not goal.met(h["measured"])
                             and h["allowed"] > (passed_at or 0)), default=None)
            if passed_at is None or failed_at is None:
                break
            allowed = (passed_at * failed_at) ** 0.5 if smooth else (passed_at + failed_at) / 2
        for _ in range(rounds):
            if phase == "measured" and failed_at <= passed_at * 1.02:
                break
            tested = try_allowed(allowed, phase)
            if tested is None:
                failed_at = allowed
            else:
                measured, bound = tested
                if goal.met(bound if phase == "bound" else measured):
                    passed_at = allowed if passed_at is None else max(passed_at, allowed)
                else:
                    failed_at = allowed if failed_at is None else min(failed_at, allowed)
            if passed_at is not None and failed_at is not None:
                if failed_at <= passed_at * 1.02:
                    break
                allowed = (passed_at * failed_at) ** 0.5 if smooth else (passed_at + failed_at) / 2
            elif failed_at is not None:  # nothing passed yet: shrink by how far the real model missed
                last = history[-1]["measured"] if history else goal.max_error * 2
                allowed = failed_at * (0.25 if smooth else max(0.2, min(0.9, goal.max_error / max(last, 1e-12))))
            else:  # everything passed so far: there may be room for a smaller model
                allowed = passed_at * (4 if smooth else 2)
    # Probes above: the bound is not monotone in the allowed error (the allocation changes many layers at once, and
    # the held-back samples' worst one moves), so one miss can stop the bisection far below what other allocations
    # meet (silero-vad-op15: the allocation within 0.02 missed its bound, those within 0.03-0.0375 met it in an
    # earlier run). With a budget in the curves' own metric, PROBES more trials at multiples of the largest allowed
    # error that passed; the largest that meets its bound becomes the search's allocation.
    base = passed_at  # the bisection's own: the safe rung stays at SAFE_RUNG x it whatever the probes find
    if not smooth and passed_at is not None:
        for factor in PROBES:
            probed = try_allowed(base * factor, "probe")
            if probed is not None and goal.met(probed[1]):
                passed_at = max(passed_at, base * factor)
    # A safe first rung for the check set, with a budget in the curves' own metric: the check set judges at its own
    # confidence bound, and the search's allocations sit just inside the bound on the held-back samples, so the most
    # accurate of them can miss on the check set and leave nothing to write (MiniLM-L3, cosine=0.99: 5 allocations
    # measured 0.0083-0.0089 on 32 held-back sentences, the largest missed on the 32 check sentences). The
    # allocation within SAFE_RUNG x the largest allowed error that passed is tried too; its bound on the held-back
    # samples being the smallest, it is usually tested first.
    # Between it and the search's allocation (after the probes), RUNGS - 1 more rungs at geometric steps: the check set tests them in
    # turn, so it stops at the first that misses rather than at the search's allocation (the held-back samples chose
    # it, so it sits at their edge: in every calibrated zoo run of session 9 it missed on the check set and the safe
    # rung, at half its error, was written).
    # The rungs lie on a nested path from the safe rung to the search's allocation (budget.nested_path): each
    # switches a few more weights to the search's setting, those that save the most bytes per predicted error first.
    # Rungs re-solved by the knapsack at each allowed error differed in many weights from their neighbours, so their
    # errors jumped (silero-vad-op15: the rung after the safe one measured 0.0063 on the held-back windows, 0.0162
    # on the check set, its bound 0.0204 missed 0.02 and stopped the sequence at 4.24x where another order of
    # the same allocations wrote 5.26x); on a nested path the errors grow with the bytes saved, so the first miss
    # on the check set is where the budget runs out, not a jump between unrelated allocations.
    path: set[tuple] = set()  # the allocations of the nested path, the only ones that met their bound tested on the check set
    if not smooth and passed_at is not None:
        points = additive_points()
        safe_choice = budget_math.allocate(points, adding(base * SAFE_RUNG))
        top_choice = budget_math.allocate(points, adding(passed_at))
        if safe_choice is not None and top_choice is not None:
            rungs = [safe_choice, *budget_math.nested_path(points, safe_choice, top_choice, RUNGS), top_choice]
            for index, choice in enumerate(rungs):
                allowed = base * SAFE_RUNG if index == 0 else passed_at if index == len(rungs) - 1 else \
                    predicted_error(choice.items())
                try_choice(choice, allowed, "safe rung" if index == 0 else "rung")
            path = {tuple(sorted(choice.items())) for choice in rungs}
    # The check set, never seen by the search, decides, as a fixed-sequence test (each allocation is tested
    # only if every one before it passed, so testing several costs no extra margin): the passing allocations,
    # each fit on the search's samples, until one misses the budget at its confidence bound there; the smallest
    # that passed is written.
    from onnxcomp.runtime import InferenceSession
    expected = run_batched(_session(model), checking, run_size)[0] if checked else None
    # The data-free allocation (compress's default; its back-off measured on the held-back samples, never the check
    # set) is a candidate too, when it meets the budget at its confidence bound on the held-back samples and is smaller
    # than the largest candidate (which the check set then still tests first): the written model is never larger
    # than the data-free one when that one would pass the same sequence.
    free = _data_free(input_path, output_path, budget_on, hold, reference, labels, goal, seed, min_elements, eval_data,
                      {**fidelity_options, "keep_names": keep_names}, run_size) if DATA_FREE and passing else None
    if free is not None and free[1] < max(entry[1] for entry in passing.values()):
        passing[("data-free",)] = free
    elif free is not None:
        shutil.rmtree(free[5][0], ignore_errors=True)
        free = None
    # Off the nested path, an allocation that met its bound on the held-back samples would sit in the sequence by its
    # size between two rungs and differ from both in many weights: left out (those that met the budget only as
    # measured, long shots, still follow the path).
    candidates = [entry for key, entry in passing.items() if not path or key in path or key == ("data-free",)
                  or not goal.met(entry[4])]
    ladder = []
    for entry in sorted(candidates, key=lambda entry: -entry[1]):  # near-duplicates would only risk a stop
        if not ladder or entry[1] < ladder[-1][1] * (1 - LADDER_STEP):
            ladder.append(entry)
    ladder = ladder if len(ladder) <= CHECKS else [ladder[round(i * (len(ladder) - 1) / (CHECKS - 1))] for i in range(CHECKS)]
    if free is not None and all(entry is not free for entry in ladder):  # kept whatever the spacing: it is the floor the search must beat
        ladder.append(free)
    # The order of the sequence: first the allocations that met the budget at their bound on the held-back samples,
    # then those that met it only as measured there (long shots: one of them missing on the check set stopped the
    # sequence before the data-free output, on the tiny MLP of tests/test_budget.py at cosine=0.95), each group from
    # the largest down. Ordered by the bound itself, the allocation the search picked for just meeting it there (a
    # lucky draw as often as not) came first and, missing on the check set, stopped the sequence before the safer
    # ones (the same MLP at cosine=0.98 then wrote nothing; the largest first writes 2546 bytes).
    ladder = sorted(ladder, key=lambda entry: (not goal.met(entry[4]), -entry[1]))
    if not checked:
        ladder = [min(ladder, key=lambda entry: entry[1])]
    elif ladder:  # (empty when no trial met the budget as measured: then no near miss is tried, the run fails)
        ladder += near_misses(tried, min(entry[1] for entry in ladder))
        if distilling:
            ladder += distilled_rungs(min(entry[1] for entry in ladder))
    checks, accepted = [], []  # accepted: (staging, staged, report, settings, predicted, measured, check)
    # the layers' sequential statistics kept from one allocation to the next: a layer whose upstream layers are
    # compressed alike is not observed again (CompressSequentiallyPass; the same bytes written)
    reuse: dict | None = {} if sequential else None
    # The data-free output's size is its written size, the allocations' their trial size (the input's bytes with
    # each compressed weight's dense bytes replaced by its record's: no short names, no float16 of the other
    # tensors), which overstates what is written by a few percent. Ordered by those sizes, the data-free output
    # of silero-vad-op15 (236,073 bytes) came after an allocation written at 224,712 bytes that missed and stopped
    # the sequence, so it was never tested, and a 243,400-byte allocation was written. So it is tested before the
    # first allocation whose written size (known once compressed, before the check set is read) is no larger than
    # its own, or before the first that met the budget only as measured on the held-back samples, or last: the
    # order still depends on nothing the check set measures (the fixed-sequence principle holds). An allocation
    # written no smaller than one accepted before it is not tested.
    free_left = free is not None and any(entry is free for entry in ladder)

    def stage(entry) -> tuple:
        """(staging folder, staged model, report) of a ladder entry: the data-free output as written, or the
        allocation compressed (each fit on the search's samples)."""
        if len(entry) > 5:  # the data-free output, written already
            return entry[5]
        staging = staging_folder(output_path)
        staged = os.path.join(staging, os.path.basename(output_path))
        with _removed_on_error(staging):
            report = compress(input_path, staged, calib=searched, prune=prune, score=score, reconstruct=reconstruct,
                              outliers=outliers, ridge=ridge, init=init, seed=seed, min_elements=min_elements, settings=entry[0],
                              float16_others=FLOAT16_OTHERS,
                              eval_data=eval_data, rounding=rounding, sequential=sequential, sequential_reuse=reuse, keep_names=keep_names,
                              distill=distill,
                              **{**fidelity_options, "fidelity_data": fidelity_options.get("fidelity_data") or
                                 (checking if checked else None)})
        return staging, staged, report

    def confirmed_on_check(entry, staged_entry) -> bool:
        """Test a staged ladder entry on the check set: True (and kept in ``accepted``) if it meets the budget at its
        bound there; else its folder is removed and the sequence stops."""
        settings, _, predicted, measured = entry[:4]
        staging, staged, report = staged_entry
        if checked:
            with _removed_on_error(staging):
                output = budget_on.combine(run_batched(InferenceSession(staged), checking, run_size, outputs=budget_on.names))
            on_check = budget_math.error(goal.metric, expected, output, check_labels)
            check_bound = budget_math.error_bound(goal.metric, expected, output, check_labels, Z)
            checks.append({"bytes": report.output_bytes, "measured": on_check, "bound": check_bound,
                           "held_back": measured})  # its error on the held-back samples (a trial's, or the data-free output's)
            if not goal.met(check_bound):
                log.info("allocation of %d bytes misses the budget on the check set (%s %.4g, bound %.4g): "
                         "the sequence stops", report.output_bytes, goal.metric, on_check, check_bound)
                shutil.rmtree(staging, ignore_errors=True)
                return False
        accepted.append((staging, staged, report, settings, predicted, measured, checks[-1] if checks else None))
        return True

    try:
        stopped = False
        for entry in (e for e in ladder if e is not free):
            staged_entry = stage(entry)
            if free_left and (free[1] >= staged_entry[2].output_bytes or entry[4] is None or not goal.met(entry[4])):
                free_left, entry_free = False, free
                free = None  # its folder is in accepted now, or removed
                if not confirmed_on_check(entry_free, entry_free[5]):
                    shutil.rmtree(staged_entry[0], ignore_errors=True)
                    stopped = True
                    break
            if accepted and staged_entry[2].output_bytes >= min(a[2].output_bytes for a in accepted):
                # written no smaller than one accepted already: its test could only stop the sequence (dropping it
                # depends on sizes alone, as if it had never been in the sequence)
                shutil.rmtree(staged_entry[0], ignore_errors=True)
                continue
            if not confirmed_on_check(entry, staged_entry):
                stopped = True
                break
        if free_left and not stopped:
            free_left, entry_free = False, free
            free = None
            confirmed_on_check(entry_free, entry_free[5])
        if accepted:
            best = min(accepted, key=lambda a: a[2].output_bytes)  # the last (trial bytes only estimate the written)
            staging, staged, report, settings, predicted, measured, confirmed = best
            report.sidecar_path = model_io.install_staged(staged, output_path)
            report.output_path = output_path
            report.budget = {"metric": goal.metric, "value": goal.value, "allocation_metric": metric,
                             "output": model.graph.output[0].name,
                             "predicted_error": predicted, "measured_error": measured,
                             "holdout_samples": held, "check_samples": checked, "z": Z, "float16_error": half_error,
                             "check_error": confirmed["measured"] if confirmed else None,
                             "check_bound": confirmed["bound"] if confirmed else None,
                             "checks": checks, "settings": settings, "rounds": history, "cache": cache_file,
                             "cache_between": between_file if BETWEEN else None,
                             "data_free": predicted is None, "distilled": distilling}
            return report
    finally:
        for entry in accepted:
            shutil.rmtree(entry[0], ignore_errors=True)
        if free is not None:
            shutil.rmtree(free[5][0], ignore_errors=True)
    floor = budget_math.combined(adds, [min(c[3] for c in cands) for cands in curves.values()])
    closest = min(checks, key=lambda c: c["bound"]) if checks else None
    why = (f"{len(checks)} allocation(s) that met it on the {held} held-back samples missed it on the {checked} check samples "
           f"(closest: {goal.metric} {closest['measured']:.4g} measured, {closest['bound']:.4g} with its margin, "
           f"{goal.max_error:.4g} allowed)"
           if checks else f"even the most accurate candidates predict an error of {floor:.4g} (allowed {goal.max_error:.4g}) "
                          f"and {len(history)} compressed trials missed it")
    raise OnnxcompError(f"no allocation meets the budget {budget} with its safety margin: {why}; loosen the budget, "
                        "give more calibration samples, or use a smoother metric (kl, cosine, rel_l2)")


# Per-layer trials on cached layer inputs: a trial's layer output error on the fit samples,
# eps = sum_i ||X (v_i - w_i)||^2 / sum_i ||X w_i||^2 from the layer's Gram matrix (or, for a weight no calibrated
# layer multiplies, the relative squared weight error), predicts the model's error as alpha * eps^p (p = 1 for cosine
# and kl, both second order in a small output change; p = 1/2 for rel_l2, first order). alpha is fit per weight on
# trials measured end to end (anchors). A trial is measured in onnxruntime rather than predicted while the weight has
# fewer than ANCHORS anchors, when eps lies more than EXTRAPOLATE times outside the anchors' range, and for the first
# setting of every SPOT_CHECK-th sparsity (a spot check that becomes an anchor), and for every trial of a weight whose
# anchors' ratios m / eps^p spread by more than SPREAD (the proxy is not exact enough for this weight).
# ENVELOPE (environment ONNXCOMP_ENVELOPE=1; off by default): such a weight's trials are predicted from the anchors'
# largest ratio instead (at least every anchor's ratio-implied error), those whose eps lies below every anchor's
# measured. Meant for vgg16-tumor, whose anchors spread and whose ~1,100 whole-weight trials never finished; not
# safe as a default: on ppocr-cls the measured error was up to 26x the envelope's prediction (pruned settings: the
# same eps costs up to 400x more model error than at sparsity 0), and its output went from 6.23x within tolerance
# to 5.71x outside it (docs/benchmarks.md, vgg12).
ANCHORS = 3
SPOT_CHECK = 4
SPREAD = 4.0  # predictions within a factor 2 of every anchor: attention query/key weights spread ~3.5x on MiniLM
EXTRAPOLATE = 4.0
NOISE = 1e-6  # model errors below this are float32 rounding noise, not a usable anchor
ENVELOPE = os.environ.get("ONNXCOMP_ENVELOPE", "") == "1"
# A weight whose anchors spread beyond SPREAD is never predicted again (a ratio range only widens as anchors come),
# so each of its later trials runs the model. Where one run on the held-back samples costs more than
# SUBSET_WORK multiply-adds (vgg16-tumor: 100 crops of 240 x 240, 1.8e12; every other zoo model 6.5e10 or less, or
# too few held-back samples to gain), those trials are measured on a fixed seeded subset of the held-back samples
# (held_subset_size) instead of all of them: a measurement still, not a prediction. The search's whole-allocation
# trials, the check set and the anchors taken before the spread keep every sample.
# The subset's size: its mean error within SUBSET_ERROR relative standard error for per-sample errors whose
# coefficient of variation is SAMPLE_SPREAD, the largest measured on vgg16-tumor's 100 held-back crops (per-crop KL
# with one conv weight k-means-quantised at 2 or 3 bits: 2.2-2.96; the 10 worst crops held 69-85 % of the sum), so
# two standard errors stay within +-50 %, tighter than the factor 2 the proxy accepts of a prediction (SPREAD 4):
# 60 of 100 (docs/benchmarks.md, vgg13).
SUBSET_WORK = 1e11
SAMPLE_SPREAD = 3.0
SUBSET_ERROR = 0.25


FACTOR_CACHE_BYTES = 256 << 20  # the search rounds keep every layer's inverse factor while all fit in this many bytes


class _TrialModels:
    """The search's trial models without writing them: each weight compressed by the pipeline's own passes
    (_pruned, _shared; as ``compress`` does outside sequential mode) once per setting over all rounds, kept as its
    codebook and indices, and the model run in onnxruntime with the decoded weights in place (the values the
    custom ops decode). Bytes: the input's, each compressed weight's dense bytes replaced by its record's."""

    def __init__(self, model, fit, options, min_elements: int, input_bytes: int, calibrated: dict | None = None,
                 run_size: int = RUN_BATCH):
        self.model, self.options, self.input_bytes, self.run_size = model, options, input_bytes, run_size
        state = CompressionState(gs.import_onnx(model))
        SelectWeightsPass(min_elements=min_elements)(state)
        if calibrated is not None:  # the sensitivity analysis's pass on the same fit samples (_measure's ``keep``)
            for target in state.targets:
                target.layer_input, target.statistics = calibrated.pop(target.name, (None, None))
        elif options["prune"] == "activation" or options["reconstruct"]:  # one calibration pass for all rounds
            CalibrateWeightsPass(data=fit, keep_gram=options["reconstruct"] or needs_gram(options["prune"], options["score"]))(state)
        self.targets = {t.name: t for t in state.targets}
        self.compressed: dict[tuple, tuple] = {}  # (weight, sparsity, bits, codebook size) -> (codebook, indices, outliers, bytes)
        # Each layer's OBS inverse factor is computed once for all rounds (it was recomputed for every new setting:
        # 24 % of MiniLM-L3's rounds), while the factors fit in as many bytes as the statistics held here already
        # take, at most FACTOR_CACHE_BYTES: the same values (obs.cached_inverse_factor runs the same computation).
        held = [t.statistics for t in state.targets if t.statistics is not None]
        factor_bytes = sum(s.dense_gram.nbytes if s.dense_gram is not None else 4 * s.activations.shape[1] ** 2
                           for s in held if s.dense_gram is not None or s.activations is not None)
        if factor_bytes <= FACTOR_CACHE_BYTES:
            for statistics in held:
                statistics.factor_cache = {}

    def _compress(self, key: tuple) -> tuple:
        """(codebook, indices, outlier positions, outlier values, record bytes) of weight ``key[0]`` at sparsity
        ``key[1]`` and ``key[2]`` bits (a codebook of at most ``key[3]`` entries when > 0)."""
        name, sparsity, bits, size = key
        with progress.silenced():
            trial = _shared(_pruned(self.targets[name], sparsity, self.options, as_compress=True), bits, self.options, size)
        narrow = np.uint8 if len(trial.codebook) <= 256 else np.uint16
        return trial.codebook, trial.indices.astype(narrow), trial.outlier_positions, trial.outlier_values, len(trial.record)

    def prepare(self, settings: dict) -> None:
        """Compress the weights of ``settings`` not compressed in an earlier round, on parallel threads (each weight
        alone, its own numerics on one BLAS thread as in the sensitivity analysis; the same values as one thread),
        the largest first."""
        keys = sorted({_trial_key(n, s) for n, s in settings.items() if not s.get("skip")} - set(self.compressed),
                      key=lambda key: -self.targets[key[0]].size)
        workers = min(parallel.default_workers(), max(1, len(keys)))
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas") if workers > 1 else contextlib.nullcontext():
            for key, compressed in parallel.completed_map(self._compress, keys, workers):
                self.compressed[key] = compressed

    def _values(self, name: str, setting: dict) -> tuple[np.ndarray, int]:
        target = self.targets[name]
        key = _trial_key(name, setting)
        if key not in self.compressed:
            self.compressed[key] = self._compress(key)
        codebook, indices, positions, values, size = self.compressed[key]
        decoded = codebook[indices].astype(np.float32)
        decoded[positions] = values
        return decoded.reshape(target.shape), size

    def run(self, settings: dict, feeds: dict) -> tuple[np.ndarray, int]:
        """(the first output on ``feeds``, the estimated output bytes) of the allocation ``settings``."""
        values, size = {}, self.input_bytes
        self.prepare(settings)
        for name, setting in progress.track(list(settings.items()), "trial model"):
            if setting.get("skip"):
                if setting.get("float16"):  # the values half_dense writes: binary16, widened by a Cast
                    target = self.targets[name]
                    values[name] = target.original.astype(np.float16).astype(np.float32)
                    size -= target.dense_bytes // 2
                continue
            values[name], record = self._values(name, setting)
            size += record - self.targets[name].dense_bytes
        return run_batched(_session(model_io.substituted(self.model, values)), feeds, self.run_size)[0], size


def _trial_key(name: str, setting: dict) -> tuple:
    """A trial model's key of one weight's compression: (weight, sparsity, bits, codebook size or 0)."""
    return name, setting["sparsity"], setting["bits"], setting.get("codebook_size", 0)


def multiply_adds(model: onnx.ModelProto, sample: dict) -> int:
    """The multiply-adds of the model's Conv, ConvTranspose, MatMul and Gemm nodes (main graph) on one batch
    ``sample`` (input name -> array): each node's output elements times the length of its dot products, from
    onnx's shape inference with the inputs' dimensions set to the arrays' shapes. A node whose shapes are not
    inferred counts 0 (the count is then a lower bound; a model onnx cannot infer at all counts 0)."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    for value in graph.input:
        if value.name in sample and value.type.HasField("tensor_type"):
            shape = np.shape(sample[value.name])
            value.type.tensor_type.ClearField("shape")
            for size in shape:
                value.type.tensor_type.shape.dim.add().dim_value = int(size)
    copy_ = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy_).graph
    except Exception:  # an unknown domain's op or a malformed shape: no count
        return 0
    shapes = {}
    for value in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    shapes.update((t.name, list(t.dims)) for t in inferred.initializer)
    total = 0
    for node in inferred.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        out, left, right = shapes.get(node.output[0]), shapes.get(node.input[0]), shapes.get(node.input[1])
        if out is None or left is None or right is None:
            continue
        if node.op_type == "Conv":  # W [M, C / group, k...]: each output element sums C / group x k... products
            inner = int(np.prod(right[1:]))
        elif node.op_type == "ConvTranspose":  # W [C, M / group, k...]: each input element feeds M / group x k... outputs
            total += int(np.prod(left)) * int(np.prod(right[1:]))
            continue
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            inner = left[0] if trans_a else left[-1]
        else:
            inner = left[-1]
        total += int(np.prod(out)) * inner
    return total


def held_subset_size(count: int) -> int:
    """The smallest n whose mean over n of ``count`` samples (drawn without replacement) has a relative standard
    error of at most SUBSET_ERROR for per-sample values of coefficient of variation SAMPLE_SPREAD:
    SAMPLE_SPREAD * sqrt((count - n) / ((count - 1) n)) <= SUBSET_ERROR (the finite-population correction;
    Cochran 1977, Sampling Techniques, eq. 2.16), i.e. n >= count c / (count - 1 + c), c = (SAMPLE_SPREAD /
    SUBSET_ERROR)^2. 60 of 100; never more than ``count``."""
    c = (SAMPLE_SPREAD / SUBSET_ERROR) ** 2
    return min(count, int(np.ceil(count * c / (count - 1 + c) - 1e-9))) if count > 1 else count


def held_subset(model: onnx.ModelProto, hold: dict, reference: np.ndarray, labels, axes: dict,
                seed: int) -> tuple[dict, np.ndarray, np.ndarray | None, np.ndarray] | None:
    """(feeds, reference outputs, labels or None, their rows in ``hold``) of held_subset_size of the held-back
    samples, drawn seeded (``seed + 2``; in file order), on which _measure runs the trials of a weight whose anchors spread; None (every
    sample, as before) when that is every sample, or when one run of the model on them costs at most SUBSET_WORK
    multiply-adds (multiply_adds on one sample, times the samples)."""
    count = len(reference)
    size = held_subset_size(count)
    if size >= count:
        return None
    one = take_samples(hold, np.arange(1), axes)
    if multiply_adds(model, one) * count <= SUBSET_WORK:
        return None
    rows = np.sort(np.random.default_rng(seed + 2).choice(count, size, replace=False))
    return take_samples(hold, rows, axes), reference[rows], None if labels is None else labels[rows], rows


class _Downstream:
    """A weight's trials run from the values its downstream part reads from upstream, computed once.

    The nodes that depend on main-graph weight ``name`` (the weight fed as an input) form the suffix; the values
    they read from the other nodes (the boundary) do not change from trial to trial, so a probe computes them once
    per batch of ``feeds`` and each trial runs the suffix alone: the same operations on the same values as the
    whole model (onnxruntime runs every node of a graph whatever output is asked, so the whole model recomputes the
    upstream part on every trial; for a weight halfway down a CNN that is half the work). ``run`` returns None when
    the model's first output does not depend on the weight, or when the suffix does not reproduce the whole
    model's output ``reference`` with the weight unchanged (then the caller runs the whole model, ``whole``: the
    model with the weight as an input, whose batches of ``feeds`` the suffix runs too)."""

    def __init__(self, model: onnx.ModelProto, name: str, weight: np.ndarray, feeds: dict, reference: np.ndarray,
                 whole: ort.InferenceSession, threads: int, batch: int = RUN_BATCH):
        from onnxcomp.passes.calibration import feed_batches, names_read, probe_model
        graph = model.graph
        tainted, downstream, upstream = {name}, [], set()
        for node in graph.node:  # graph order is topological
            if names_read(node) & tainted:
                downstream.append(node)
                tainted.update(o for o in node.output if o)
            else:
                upstream.update(o for o in node.output if o)
        self.session = None
        output = graph.output[0]
        if output.name not in tainted:
            return
        read = set().union(*(names_read(node) for node in downstream))
        boundary = sorted(read & upstream)
        graph_inputs = {i.name for i in graph.input if i.name != name}
        parts = feed_batches(whole, feeds, batch)
        probe = _session(probe_model(model, boundary), threads) if boundary else None  # requested values survive optimisation
        # the boundary values of every batch: in memory up to DOWNSTREAM_BYTES, the further batches' on disk
        self.parts = BatchStore(len(parts), DOWNSTREAM_BYTES)
        for b, part in enumerate(parts):
            values = dict(zip(boundary, probe.run(boundary, {k: v for k, v in part.items()
                                                              if k in {i.name for i in probe.get_inputs()}}))) if probe else {}
            values.update({k: v for k, v in part.items() if k in read})
            self.parts.put(b, values)
            del values
        types = self.parts.types()
        suffix = onnx.ModelProto()
        suffix.CopyFrom(model)
        del suffix.graph.node[:]
        suffix.graph.node.extend(downstream)
        kept = [t for t in suffix.graph.initializer if t.name in read and t.name != name]
        del suffix.graph.initializer[:]
        suffix.graph.initializer.extend(kept)
        declared = [i for i in suffix.graph.input if i.name in read and i.name in graph_inputs]
        del suffix.graph.input[:]
        suffix.graph.input.extend(declared)
        tensor = next(t for t in graph.initializer if t.name == name)
        suffix.graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
        for value in boundary:
            array = types[value]
            suffix.graph.input.append(onnx.helper.make_tensor_value_info(
                value, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), [f"{value}_{k}" for k in range(array.ndim)]))
        infos = [v for v in suffix.graph.value_info if v.name not in set(boundary)]
        del suffix.graph.value_info[:]
        suffix.graph.value_info.extend(infos)
        del suffix.graph.output[:]
        suffix.graph.output.append(output)
        self.weight_name = name
        try:
            self.session = _session(suffix, threads)
            unchanged = self.run(weight)
        except Exception:  # onnxruntime refuses the cut graph: the whole model it is
            self.session = None
            return
        scale = float(np.abs(reference).max()) if reference.size else 0.0
        if unchanged.shape != reference.shape or not np.allclose(unchanged, reference, rtol=1e-4, atol=1e-5 * (scale or 1.0)):
            self.session = None

    def run(self, weight: np.ndarray) -> np.ndarray | None:
        """The model's first output with ``weight`` in place, on every batch of the feeds; None if not available."""
        if self.session is None:
            return None
        from onnxcomp.passes.calibration import join_batches
        return join_batches(self.session, [self.session.run(None, {**self.parts.get(b), self.weight_name: weight})
                                           for b in range(self.parts.batches)])[0]

    def close(self) -> None:
        """Remove the boundary values kept on disk (also done when the object is collected or at exit)."""
        if hasattr(self, "parts"):
            self.parts.close()


class _Stopped(Exception):
    """A weight's trials were abandoned because the run was interrupted."""


class _Proxy:
    """Decides, for one weight, which trials run the model and predicts the others (see the comment above)."""

    def __init__(self, target, metric: str, gram: np.ndarray | None = None):
        """``gram``: the layer's Gram matrix as float64 when the caller has it (a row sample's proxy: its weight's)."""
        from onnxcomp.passes.calibration import to_rows
        self.power = 0.5 if metric == "rel_l2" else 1.0
        statistics = target.statistics
        self.gram = None
        if statistics is not None and statistics.cross is None and statistics.gram is not None:
            # float64 once: layer_error's float64 products cast a float32 G per row block otherwise (the same bits)
            from onnxcomp.core.reconstruction import float64_operand
            self.gram = gram if gram is not None else float64_operand(statistics.gram)
        if self.gram is not None:
            self.layout = target.layer_input.layout
            self.rows = lambda values: to_rows(values, self.layout).astype(np.float64)
            original = self.rows(target.original)
            self.original = original
            self.energy = float(((original @ self.gram) * original).sum())
        else:
            self.original = np.asarray(target.original, dtype=np.float64)
            self.energy = float((self.original ** 2).sum())
        self.anchors: list[tuple[float, float]] = []  # (eps, measured error)
        self.runs = 0

    def layer_error(self, values: np.ndarray) -> float:
        """eps: the relative squared error of the layer's output on the fit samples (of the weight without a Gram)."""
        if self.energy <= 0:
            return 0.0
        if self.gram is not None:
            from onnxcomp.core.reconstruction import row_errors
            return float(row_errors(self.rows(values), self.original, self.gram).sum()) / self.energy
        return float(((np.asarray(values, dtype=np.float64) - self.original) ** 2).sum()) / self.energy

    def _ratios(self) -> list[float]:
        return [m / e ** self.power for e, m in self.anchors if e > 0 and m > NOISE]

    def predict(self, eps: float, spot_check: bool) -> float | None:
        """The predicted model error, or None when this trial must be measured: alpha * eps^p with alpha the
        anchors' geometric mean ratio when they spread by at most SPREAD; beyond that, with ENVELOPE, their largest
        ratio (the upper envelope: at least every anchor's ratio-implied error, alpha_j * eps^p for each j) for an
        eps no lower than the lowest anchor's: below it, the small errors the tight budgets pick, the envelope was
        1.9-13x the measured error on silero-vad's spread weights, and few trials lie below (the higher bit widths
        of the first sparsity): docs/benchmarks.md, vgg12."""
        ratios = self._ratios()
        if spot_check or len(ratios) < ANCHORS:
            return None
        used = [e for e, m in self.anchors if e > 0 and m > NOISE]
        if not min(used) / EXTRAPOLATE <= eps <= max(used) * EXTRAPOLATE:
            return None
        if max(ratios) > SPREAD * min(ratios):
            return max(ratios) * eps ** self.power if ENVELOPE and eps >= min(used) else None
        alpha = float(np.exp(np.mean(np.log(ratios))))
        return alpha * eps ** self.power

    def measured(self, eps: float, error: float) -> None:
        self.anchors.append((eps, error))
        self.runs += 1

    def spread(self) -> bool:
        """Whether at least ANCHORS anchors' ratios spread beyond SPREAD: then no later trial of the weight is
        predicted (but by ENVELOPE), since more anchors only widen the range."""
        ratios = self._ratios()
        return len(ratios) >= ANCHORS and max(ratios) > SPREAD * min(ratios)

    def describe(self) -> str:
        """The anchors' count, ratio range and spread, for the log."""
        ratios = self._ratios()
        if not ratios:
            return f"{len(self.anchors)} anchors"
        return (f"{len(self.anchors)} anchors, ratios {min(ratios):.3g}-{max(ratios):.3g}, spread "
                f"{max(ratios) / min(ratios):.2f}")


def _measure(model, fit, hold, reference, labels, metric, sparsities, bits, options, min_elements, cached=None, save=None,
             cap=None, keep: dict | None = None, run_size: int = RUN_BATCH, cached_between: dict | None = None,
             subset: tuple | None = None):
    """Each selected weight's curve [(sparsity, bits, record bytes, error)], the dense candidate last, with, for the
    weights that carry the most bytes (in_between_weights), points (sparsity, bits, record bytes, error, K) at codebook
    sizes K between two bit widths (in_between_sizes) after the 2^b points. Curves in ``cached`` (their 2^b points and
    the dense one) and ``cached_between`` (weight -> its in-between points, possibly none) are reused: a weight whose
    2^b points are cached and in-between ones are not has those measured alone; ``save(curves, in_between)`` is called
    after each newly measured weight (``in_between``: the weights given in-between sizes). Errors are measured in
    onnxruntime or predicted from the layer's own output error (``_Proxy``). With ``cap``, once a bit width's
    error exceeds it, that bit width is not tried at the higher sparsities of the weight (the progress counts
    them as done).

    Saturated bit widths are not tried either: at a sparsity above 0, once a bit width's error is more than
    SATURATION x the next lower width's, the higher widths at that sparsity are skipped. The error of a pruned
    weight is its pruning error P plus a rounding error R(b) that falls about 4x per bit; e(b) >= 0.7 e(b - 1)
    then gives R(b) <= 0.17 P, so each further bit would lower the error by at most 15 % for 15-30 % more bytes,
    while a lower sparsity reaches it with fewer. On two cached MiniLM-L3 cosine curve sets (902 and 1038
    trials) this skips 40 % of the trials and leaves the allocation at every allowed error from 0.0025 to 0.03
    unchanged (docs/benchmarks.md, branch toolspeed4).

    Weights run on ``parallel.default_workers()`` threads, the costliest first (_block_work), each thread taking
    the next weight as soon as it finishes one (a fixed pairing left a core idle behind a large weight); each
    curve is saved as soon as it is done, and the curves are returned in the model's weight order.

    ``keep`` (a dict), when this call runs the calibration pass, is filled with every selected weight's (layer input,
    statistics), name -> pair, for _TrialModels: the same pass on the same samples, which no trial changes (each
    weight's cached inverse factor is dropped when its curve is done). A search with every curve cached calibrates
    for its trial models instead.

    ``subset`` (held_subset: feeds, reference, labels and rows of some of the held-back samples), when given,
    measures every trial of a weight whose anchors spread (``_Proxy.spread``) on those samples alone; the trials
    before, and every trial of the other weights, on all of ``hold`` (the debug log gives their error on the
    subset's rows too, from the same run: what a measurement on the subset would have said)."""
    graph = gs.import_onnx(model)
    state = CompressionState(graph)
    SelectWeightsPass(min_elements=min_elements)(state)
    cached, cached_between = cached or {}, cached_between or {}
    in_between = in_between_weights(state.targets)
    curves = {t.name: cached[t.name][:-1] + list(cached_between.get(t.name, ())) + cached[t.name][-1:]
              for t in state.targets if t.name in cached and (t.name not in in_between or t.name in cached_between)}
    todo = [t for t in state.targets if t.name not in curves]
    calibrating = bool(todo) and (options["prune"] == "activation" or options["reconstruct"])
    if calibrating:  # one pass: every layer's statistics
        CalibrateWeightsPass(data=fit, keep_gram=options["reconstruct"] or needs_gram(options["prune"], options["score"]))(state)
    handed = calibrating and keep is not None
    if handed:
        keep.update((t.name, (t.layer_input, t.statistics)) for t in state.targets)
    main = {t.name for t in model.graph.initializer}
    def tried_sparsities(target):
        # Activation-aware pruning needs the layer's inputs: a weight no calibrated layer multiplies (a bias, a
        # normalization scale) is tried unpruned only.
        return sparsities if options["prune"] != "activation" or target.statistics is not None else [0.0]
    settings = len(sparsities) * len(bits)
    trials = sum(len(tried_sparsities(t)) * len(bits) for t in todo)
    if todo:
        progress.messages()(f"sensitivity analysis: {len(todo)} weights x {settings} settings to measure, {len(curves)} cached")
    advance = progress.counter("sensitivity analysis", trials)
    started, work_total = time.monotonic(), sum(_block_work(t, len(bits)) * len(tried_sparsities(t)) for t in todo)
    work_done = [0.0]
    say = progress.messages()  # time estimates and per-weight lines on the command line's stderr
    lock, stop = threading.Lock(), threading.Event()  # stop: the run was interrupted, threads end at their next trial
    trial_cpu = [0.0, 0.0]  # CPU seconds of the trials (their threads'): at 2^b codebooks, at sizes in between
    workers = min(parallel.default_workers(), max(1, len(todo)))

    def measure(target):
        """One weight's curve and how many of its trials ran in onnxruntime (weights run on parallel threads)."""
        # A float32/float16 main-graph weight is fed as an input; others (bfloat16, in a subgraph) substituted in a copy.
        feedable = target.name in main and target.dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        threads = 1 if workers > 1 else 0  # one onnxruntime thread per weight when the weights share the cores
        session = _session(_weight_as_input(model, target.name), threads) if feedable else None
        if target.statistics is not None:
            target.statistics.factor_cache = {}  # every trial of this weight rounds against the same Gram matrix
        proxy = _Proxy(target, metric)
        suffix = None  # the model downstream of the weight (_Downstream), built when a trial first runs the model
        suffixes = {}  # the same on ``subset``'s samples, built when a trial first runs there
        sample = _row_sample(target, options["seed"])
        sample_error = _Proxy(sample, metric, proxy.gram).layer_error if sample is not None else None
        points, spent = [], 0.0  # spent: the cost (_trial_cost) of the trials run so far
        capped = set()  # bit widths whose error passed ``cap`` at a lower sparsity
        known = {(p[0], p[1]): p for p in cached.get(target.name, ()) if p[0] is not None}  # its cached 2^b points
        between = []  # its points at codebook sizes between two bit widths (in_between)
        # The in-between trials are measured end to end, never predicted (BETWEEN_VERSION 2: MiniLM-L3's word embedding
        # at 12 entries was predicted on its row sample at 0.0105, on the line between 8 and 16 entries, and the trials
        # that took it measured about twice their predictions). Their anchors go to a proxy of their own: the 2^b points
        # are then those of a run without them (the same anchors, so the same predictions and measurements)
        between_proxy, between_anchors = copy.copy(proxy), []  # (a new proxy: no anchors, no runs yet)
        cpu = [0.0, 0.0]  # this thread's CPU seconds in the 2^b trials and in the in-between ones
        memo: dict = {}  # this sparsity's pruned weight and row sample, made on the first trial that needs them

        def trial(sparsity: float, b: int, size: int, spot: bool, proxy=proxy) -> tuple[int, float]:
            """(record bytes, model error) of the weight at ``sparsity``, ``b`` bits (a codebook of at most ``size``
            entries when > 0): on the row sample and predicted when ``proxy`` holds, else whole, measured in
            onnxruntime when it cannot predict it (``spot``: a spot check, always measured)."""
            nonlocal spent, suffix
            error = bytes_ = None
            # on the row sample: predicted if the proxy holds. A weight whose anchors spread (without ENVELOPE) is never
            # predicted again, so its row sample would be compressed for nothing (1-2 CPU s a trial on vgg16's block 4/5)
            if sample is not None and not spot and (ENVELOPE or not proxy.spread()):
                with progress.silenced():
                    memo["sampled"] = memo.get("sampled") or _pruned(sample, sparsity, options, iterations=CG_ITERATIONS)
                    shared = _shared(memo["sampled"], b, options, size)
                sampled_eps = sample_error(shared.decoded())
                error = proxy.predict(sampled_eps, False)
                bytes_ = _scaled_bytes(shared, target.size / sample.size)
                spent += _trial_cost(target, True)
                if error is not None:
                    log.debug("%s at sparsity %g, %d bits: row sample eps %.4g, predicted %.4g (%s)", target.name,
                              sparsity, b, sampled_eps, error, proxy.describe())
            if error is None:
                with progress.silenced():
                    memo["pruned"] = memo.get("pruned") or _pruned(target, sparsity, options, iterations=CG_ITERATIONS)
                    shared = _shared(memo["pruned"], b, options, size)
                values = shared.decoded()
                eps = proxy.layer_error(values)
                error = proxy.predict(eps, spot)
                bytes_ = len(shared.record)
                spent += _trial_cost(target, False)
                if error is None:
                    on_subset = subset is not None and proxy.spread()
                    feeds, wanted, truth = subset[:3] if on_subset else (hold, reference, labels)
                    if feedable:
                        feed = values.astype(np.float16 if target.dtype == onnx.TensorProto.FLOAT16 else np.float32)
                        if on_subset and "subset" not in suffixes:
                            suffixes["subset"] = _Downstream(model, target.name, target.original.astype(feed.dtype), feeds,
                                                             wanted, session, threads, run_size)
                        elif not on_subset and suffix is None:  # on the first trial that runs the model
                            suffix = _Downstream(model, target.name, target.original.astype(feed.dtype), hold, reference,
                                                 session, threads, run_size)
                        output = (suffixes["subset"] if on_subset else suffix).run(feed)
                        if output is None:
                            output = run_batched(session, feeds, run_size, extra={target.name: feed})[0]
                    else:
                        output = run_batched(_session(model_io.substituted(model, {target.name: values}), threads), feeds,
                                             run_size)[0]
                    error = budget_math.error(metric, wanted, output, truth)
                    proxy.measured(eps, error)
                    where = f" on {len(wanted)} of {len(reference)} held-back samples" if on_subset else ""
                    if subset is not None and not on_subset and log.isEnabledFor(logging.DEBUG):
                        where = (f" ({budget_math.error(metric, subset[1], output[subset[3]], subset[2]):.4g} on the "
                                 f"{len(subset[1])} of the subset)")
                    log.debug("%s at sparsity %g, %d bits: eps %.4g, measured %.4g%s (%s)", target.name, sparsity, b, eps,
                              error, where, proxy.describe())
                else:
                    log.debug("%s at sparsity %g, %d bits: eps %.4g, predicted %.4g (%s)", target.name, sparsity, b,
                              eps, error, proxy.describe())
            return bytes_, error

        for step, sparsity in enumerate(tried_sparsities(target)):
            memo.clear()
            spot_check = step % SPOT_CHECK == 0
            saturated, previous = False, None  # saturated: the higher bit widths at this sparsity are not tried
            for position, b in enumerate(bits):
                if stop.is_set():
                    raise _Stopped
                if b in capped or saturated:
                    with lock:
                        advance()
                    continue
                if (sparsity, b) in known:  # measured by an earlier run (the cache holds the 2^b points alone)
                    size, error = known[(sparsity, b)][2:4]
                else:
                    clock = time.thread_time()
                    size, error = trial(sparsity, b, 0, spot_check and position == 0)
                    cpu[0] += time.thread_time() - clock
                points.append((sparsity, b, size, error))
                if cap is not None and error > cap:
                    capped.add(b)
                saturated = sparsity > 0 and previous is not None and error > SATURATION * previous
                previous = error
                with lock:
                    advance()
            if target.name in in_between:  # sizes between two bit widths this sparsity tried (in_between_sizes)
                tried = {p[1] for p in points if p[0] == sparsity}
                between_proxy.anchors = proxy.anchors + between_anchors
                for low, high in zip(bits, bits[1:]):
                    if low in tried and high in tried:
                        if stop.is_set():
                            raise _Stopped
                        size_k = between_size(low, high)
                        wide = index_bits(size_k)
                        runs, clock = len(between_proxy.anchors), time.thread_time()
                        size, error = trial(sparsity, wide, size_k, True, between_proxy)  # measured, never predicted
                        cpu[1] += time.thread_time() - clock
                        between_anchors.extend(between_proxy.anchors[runs:])
                        between.append((sparsity, wide, size, error, size_k))
            with lock:
                work_done[0] += _block_work(target, len(bits))
                if target is costliest[0] and sparsity == tried_sparsities(target)[0] and len(todo) > 1 and spent > 0:
                    # this thread's rate on its first trials (all whole while the proxy has no anchors), the other
                    # threads going as fast
                    rate = (time.monotonic() - started) / spent
                    say(f"sensitivity analysis: about {_duration(rate * work_total / workers)} "
                        f"for {trials} trials on {workers} thread(s) (timed on the first {len(bits)})")
        for downstream in [suffix, *suffixes.values()]:
            if downstream is not None:
                downstream.close()
        points.extend(between)  # after the 2^b points (a cache of those alone is main's format), before the dense one
        points.append((None, None, target.dense_bytes, 0.0))  # leaving the weight dense is a candidate too
        if handed and target.statistics is not None:  # kept for the trial models, without this weight's inverse factor
            target.statistics.factor_cache = None
        target.statistics = target.layer_input = None  # this weight's Gram matrix is no longer needed here
        with lock:
            trial_cpu[0] += cpu[0]
            trial_cpu[1] += cpu[1]
        return points, proxy.runs + between_proxy.runs

    # threadpoolctl's limits are process-wide: each numeric step's own one-thread limit, entered and left on two
    # threads at once, restored two BLAS threads under the other thread's solves (two-thread OpenBLAS factorisations
    # of small matrices ran 10-40x slower on loaded cores). One limit for the whole analysis instead, set after
    # scipy's LAPACK is loaded (threadpoolctl limits only the libraries already loaded).
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits
    try:
        costliest = sorted(todo, key=lambda t: -_block_work(t, len(bits)) * len(tried_sparsities(t)))  # stable: ties in order
        with threadpool_limits(limits=1, user_api="blas") if workers > 1 else contextlib.nullcontext():
            for target, (points, runs) in parallel.completed_map(measure, costliest, workers):
                curves[target.name] = points
                with lock:
                    done = work_done[0]
                left = (time.monotonic() - started) / done * (work_total - done) if done else 0.0
                say(f"sensitivity of {target.name}: {len(points) - 1} settings, {runs} measured in onnxruntime, "
                    f"{len(points) - 1 - runs} predicted from its layer error; about {_duration(left)} left")
                if save is not None:
                    save(curves, in_between)
    except BaseException:
        stop.set()  # an interrupt (Ctrl-C) or an error: the other weight's thread stops too, the saved curves stay
        raise
    if todo:  # the in-between sizes' share only where they were measured (ONNXCOMP_BETWEEN_SIZES=1)
        say(f"sensitivity analysis: {len(todo)} weights in {_duration(time.monotonic() - started)}; trials' CPU "
            f"{trial_cpu[0]:.1f} s" + (f" at 2^b codebooks, {trial_cpu[1]:.1f} s at sizes in between ({len(in_between)} "
                                       "weights)" if in_between else ""))
    return {t.name: curves[t.name] for t in state.targets}


SAMPLE_ELEMENTS = 1 << 16  # a weight with at least twice as many elements is tried on a row sample of this size (MiniLM:
# its 384 x 384 attention weights on 170 of 384 output channels, its FFN weights on 1/9 of theirs)


def between_size(low: int, high: int) -> int:
    """The codebook size K between bit widths ``low`` < ``high``: the one at the middle rate, 2^((low + high) / 2),
    rounded to an integer of the form 3 x 2^n when the widths are adjacent (6, 12, 24, 48 between 2-3, 3-4, 4-5, 5-6
    bits: log2 K = b + 0.585), 2^((low + high) / 2) for widths two apart (128 between 6 and 8 bits)."""
    return 3 << (low - 1) if high == low + 1 else 1 << ((low + high) // 2)


def no_better_than_between(points: list) -> list:
    """One weight's curve with each point at a codebook size K between two bit widths (sparsity, bits, bytes, error, K)
    given an error no lower than the straight line in (rate, log error) between the 2^b points on either side at its
    sparsity, nor than the larger one's: error(K) >= max(e_hi, e_lo^(1 - t) e_hi^t), t = (log2 K - b_lo) / (b_hi - b_lo)
    (at high rate the error falls by a constant factor per bit, about 4, so its log is linear in the rate; Gersho and
    Gray 1992, ch. 6). The errors are measurements on the held-back samples (or the proxy's predictions), and a size
    in between can measure below that line, or below both neighbours, by chance; the allocation, free to pick among
    twice as many candidates, picks those: on silero-vad (64 held-back chunks) the LSTM's weight_hh measured 0.0094
    with 6 entries, 0.0109 with 8 and 0.027 with 4, and the first trial that took such points measured 1.8x its
    prediction (docs/benchmarks.md, calk11). The 2^b points are left as measured."""
    bounded = list(points)
    for i, p in enumerate(points):
        if len(p) <= 4 or not p[4]:
            continue
        rate = float(np.log2(p[4]))
        side = [q for q in points if q[0] == p[0] and len(q) <= 4 and q[1] is not None]
        low = max((q for q in side if q[1] < rate), key=lambda q: q[1], default=None)
        high = min((q for q in side if q[1] > rate), key=lambda q: q[1], default=None)
        if low is None or high is None:
            continue
        t = (rate - low[1]) / (high[1] - low[1])
        line = low[3] ** (1 - t) * high[3] ** t if low[3] > 0 and high[3] > 0 else 0.0
        bounded[i] = (*p[:3], max(p[3], high[3], line), *p[4:])
    return bounded


def in_between_weights(targets) -> set[str]:
    """The names of the weights of ``targets`` whose curves get codebook sizes between bit widths: each holding at
    least BETWEEN_SHARE of their dense bytes (none when BETWEEN is off). A weight that holds a tenth of the model moves
    the total by a few percent when it moves half a bit; the many small ones, each a fraction of a percent, are
    left to their bit widths, so the curves' time grows by the large weights' share alone."""
    if not BETWEEN:
        return set()
    total = sum(t.dense_bytes for t in targets)
    return {t.name for t in targets if total and t.dense_bytes >= BETWEEN_SHARE * total}


def _row_sample(target, seed: int):
    """A copy of ``target`` keeping a seeded random subset of its output channels (share_weights.output_axis),
    about SAMPLE_ELEMENTS elements, or None for a weight too small to gain. Its inputs (and Gram matrix) are the
    layer's own, so its trials' layer error estimates the whole weight's without bias, at a fraction of the cost."""
    from onnxcomp.passes.share_weights import output_axis
    elements = _row_sample_size(target)
    if elements is None:
        return None
    axis = output_axis(target)
    channels = target.shape[axis]
    kept = elements // (target.size // channels)
    chosen = np.sort(np.random.default_rng(seed).choice(channels, kept, replace=False))
    values = np.take(target.original, chosen, axis=axis)
    return dataclasses.replace(target, constant=gs.Constant(target.name, values), keep=None, codebook=None, indices=None,
                               refit=None, record=None, sparsity_override=None, bits_override=None)


def _row_sample_size(target) -> int | None:
    """Elements of ``_row_sample(target)``, None when the weight is tried whole."""
    from onnxcomp.passes.share_weights import output_axis
    if len(target.shape) < 2 or target.size < 2 * SAMPLE_ELEMENTS:
        return None
    per_channel = target.size // target.shape[output_axis(target)]
    kept = max(1, SAMPLE_ELEMENTS // per_channel)
    return None if 2 * kept > target.shape[output_axis(target)] else kept * per_channel


def _scaled_bytes(trial, factor: float) -> int:
    """A sample trial's record bytes scaled to the whole weight (the codebook counted once)."""
    codebook = int(np.asarray(trial.codebook).size) * (2 if trial.dtype != onnx.TensorProto.FLOAT else 4)
    return int(round(max(len(trial.record) - codebook, 0) * factor)) + codebook


def _trial_cost(target, sampled: bool) -> float:
    """The relative cost of one trial: k-means and coding over the elements, plus, with a Gram matrix, the
    compensated rounding and refits, O(outputs * inputs^2), plus a fixed cost (passes, a share of the onnxruntime
    runs); on the weight's row sample when ``sampled``. Measured on MiniLM: an element costs as much in k-means and
    coding as 100 inputs of Gram work, the fixed cost as 500,000 elements."""
    features = target.statistics.features if target.statistics is not None and target.statistics.gram is not None else 0
    elements = (_row_sample_size(target) or target.size) if sampled else target.size
    return elements * (1.0 + features / 100.0) + 5e5


def _block_work(target, settings: int) -> float:
    """The expected cost of one sparsity's ``settings`` trials: on the row sample but for a spot check now and then."""
    return _trial_cost(target, False) / SPOT_CHECK + (settings - 1 / SPOT_CHECK) * _trial_cost(target, True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _load_cache(path: str):
    try:
        with open(path) as f:
            return {name: [tuple(p) for p in points] for name, points in json.load(f).items()}
    except (OSError, ValueError):
        return None


def _save_cache(path: str, curves) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(curves, f)
        os.replace(tmp, path)
    except OSError as error:  # a cache is an optimisation: never fail the run for it
        log.warning("cannot write the sensitivity cache %s: %s", path, error)
