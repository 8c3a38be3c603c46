"""From options to an ordered list of passes, and the ``compress`` entry point behind the CLI.

Size accounting: a weight of N float32 values costs 4N bytes before and its record's length after (header,
codebook, Huffman tables and coded indices); the file ratio compares the input file with the output model
plus its sidecar.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.passes import (AllocateWeightsPass, CalibrateWeightsPass, CompressionState, PackPortableWeightsPass, PackWeightsPass, Pipeline,
                    PruneWeightsPass, ReconstructWeightsPass, SelectWeightsPass, ShareWeightsPass)
from onnxcomp.passes.pack_portable import CODEBOOK_SUFFIX, SCATTER_OPSET, portable_bytes
from onnxcomp.passes.allocate_share import AllocateShareWeightsPass
from onnxcomp.passes.apply_settings import ApplySettingsPass
from onnxcomp.passes.fold_weights import FoldRecurrentWeightsPass
from onnxcomp.passes.integer_weights import INTEGER_WEIGHTS, IntegerWeightsPass
from onnxcomp.passes.compress_sequentially import CompressSequentiallyPass
from onnxcomp.passes.distill_weights import DistillWeightsPass
from onnxcomp.passes.tune_codebooks import TuneCodebooksPass
from onnxcomp.passes.base import DOMAIN, DOMAIN_VERSION, reads_kept
from onnxcomp.passes.base import FLOAT_TYPES, onnx_type
from onnxcomp.passes.names import all_graphs, unique_node_names
from onnxcomp.passes.prune_weights import needs_gram
from onnxcomp.passes.short_names import input_names, shorten_names
from onnxcomp.passes.value_info import declare_custom_outputs, drop_inferable_value_info

from onnxcomp.passes import model_io, share_weights
from onnxcomp import parallel, progress, staging
from onnxcomp.core import recipes, sidecar
from onnxcomp.errors import CalibrationError, FidelityError, InvalidOptionError, OutputError, UnsupportedModelError
from onnxcomp.core.recipes import LayerRule

log = logging.getLogger("onnxcomp")

# Defaults chosen from docs/benchmarks.md (bundled LeNet-300-100): see the user guide for the reasoning.
# "other": weights read by no conv, fc or embedding op (normalization scales, added tables): unpruned, 6 bits.
DEFAULT_BITS = {"conv": 5, "fc": 3, "embedding": 6, "other": 6}
DEFAULT_SPARSITY = {"conv": 0.0, "fc": 0.5, "embedding": 0.0, "other": 0.0}
FORMATS = ("custom-op", "portable")  # records in a sidecar read by the custom ops, or standard ops only
ALLOCATIONS = ("fixed", "proxy")
BACKOFF_ROUNDS = 3  # re-compressions with a tighter model budget when the measured fidelity misses WARN_COSINE
BACKOFF_FACTOR = 0.5  # each round multiplies the model's error budget by this
# After a back-off round passes on real fidelity inputs (--fidelity-data, calibration data): rounds at geometric
# midpoints between the passing and the failing budget, keeping the smallest output that passes. Not on
# synthesised inputs: there a finer search finds outputs that pass the check and lose on real data (vgg16-tumor:
# budget 0.089 passed at min cosine 0.998 but moved a real crop's top class; docs/benchmarks.md, branch ratio3).
REFINE_ROUNDS = 2
# Before any halving: rounds that tighten only the weights carrying the output error. On the round that missed,
# each weight's output error alone at its allocated error is measured (fidelity.attribute, as for the gains); the
# weights with the largest errors, whose squares reach TARGETED_SHARE of the sum of squares, get their limits
# multiplied by BACKOFF_FACTOR, every other weight keeps its limit (vgg16-tumor: the round at BUDGET misses at min
# cosine 0.985, two weights whose gains were clipped at GAIN_RANGE's low end carry 77 % of the error; tightening
# them passes at 9.5 MB where halving every weight's budget gave 11.7 MB: docs/benchmarks.md, branch ratio5).
TARGETED_ROUNDS = 2
TARGETED_SHARE = 0.5
# A targeted round runs only while the miss is within reach of the check: 1 - min cosine <= (1 - WARN_COSINE) *
# TARGETED_REACH ** (targeted rounds left). Halving the limits of weights that hold at least TARGETED_SHARE of the
# squared error lowers the predicted squared output error to at least a quarter (every weight halved), and 1 - cosine
# is about r^2 / 2 for a relative error r, so a round divides 1 - min cosine by about 4 at best; 5 leaves slack.
# ppocr-rec misses at 0.646 (1 - cos 0.354 > 0.01 * 25): its two targeted rounds reached 0.654 and 0.911 and the
# halving wrote the output anyway (docs/benchmarks.md, branch backoff6); vgg16-tumor's 0.985 is within reach.
TARGETED_REACH = 5.0
BUDGET = 0.15  # model-level budget R on sqrt(sum (g_i e2_i)^2), gains relative to their median
NOTHING_TO_COMPRESS = "nothing to compress"  # how Report.fallback begins when no weight qualified
MIN_SAVING = 0.02  # the defaults write a copy when compression would save less than this share of the input's bytes
BUDGET_UNMEASURED = 0.05  # R when fidelity cannot be measured (every gain 1, no back-off): a third of BUDGET
ATTRIBUTION_BYTES = 1 << 30  # larger inputs: no per-weight measurement (every gain 1; the back-off still applies)
ATTRIBUTION_SAMPLES = 2  # samples of the first feed each weight's effect is measured on (one model run per weight)
GAIN_RANGE = (0.25, 4.0)  # measured gains relative to their median, clipped to this range
# Inputs up to this size keep each weight's sorted values between compress's rounds (about the weights' float32
# bytes more memory; a later round then does not sort them again): ShareWeightsPass's cache.
SHARE_CACHE_BYTES = 256 << 20
AHEAD = True  # independent steps of compress on threads of their own (False: each where it was submitted, in order)
# The defaults' allocation, pruning and sharing as one chain per weight on the cores (AllocateShareWeightsPass;
# False: the three passes one after the other, each over every weight). The same bytes either way.
PIPELINED = True


@dataclass
class LayerReport:
    name: str
    kind: str
    shape: list[int]
    params: int
    sparsity: float
    codebook_size: int
    bits: int
    bytes_before: int
    bytes_after: int
    outliers: int = 0  # values stored exactly beside the codebook

    @property
    def ratio(self) -> float:
        return self.bytes_before / max(self.bytes_after, 1)


@dataclass
class Report:
    input_path: str
    output_path: str
    sidecar_path: str | None
    input_bytes: int
    output_bytes: int
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    budget: dict | None = None  # with --budget: the goal, predicted and measured error, chosen settings
    fidelity: dict | None = None  # onnxcomp.pipeline.fidelity.Fidelity.to_dict() of the written output
    allocation: str = "fixed"  # "proxy": per-layer bits and sparsity chosen without data
    backoff: list[dict] = field(default_factory=list)  # each fidelity back-off round: min cosine, bytes, the model error budget it had, passed
    fallback: str | None = None  # why the output is a copy of the input, when it is
    float_params: int = 0  # elements of every float constant of the input (all graphs, any size)
    float16: list[tuple[str, int]] = field(default_factory=list)  # (name, elements) of dense weights stored as float16
    names: dict[str, str] = field(default_factory=dict)  # short name -> the name it replaced, each node, tensor and made-up initializer renamed (passes/short_names.py; empty with keep_names)

    @property
    def ratio(self) -> float:
        return self.input_bytes / max(self.output_bytes, 1)

    @property
    def compressed_params(self) -> int:
        """Elements of the compressed float weights (integer weights coded losslessly are not float parameters)."""
        return sum(layer.params for layer in self.layers if layer.kind != "integer")

    @property
    def coverage(self) -> float:
        """Share of the input's float parameters that were compressed (1.0 when it has none)."""
        return self.compressed_params / self.float_params if self.float_params else 1.0

    @property
    def modified(self) -> bool:
        return bool(self.layers)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["compressed_params"] = self.compressed_params
        data["coverage"] = self.coverage
        for layer, entry in zip(self.layers, data["layers"]):
            entry["ratio"] = layer.ratio
        return data


def build_pipeline(*, prune: str = "magnitude", score: str = "wanda", sparsity=None, scope: str = "layer",
                   threshold: str = "percentile", sensitivity: float = 1.0, tfidf=None, bits=None,
                   init: str = "quantile", min_elements: int = 1024, seed: int = 0, calib=None, calib_batch: int = 64,
                   activation_threshold: float = 0.0, reconstruct: bool | None = None, ridge: float = 1e-2,
                   format: str = "custom-op", layers=(), settings: dict | None = None, sequential: bool = False,
                   rounding: str = "obs", outliers: str | float = "auto", allocation: str = "fixed",
                   allocation_scales: dict | None = None, allocation_limits: dict | None = None,
                   allocation_cache: dict | None = None, allocation_scaled: bool = True,
                   integer_weights: str = "gather", share_cache: dict | None = None,
                   sequential_reuse: dict | None = None, distill: bool | None = None) -> Pipeline:
    """The pass list for the given options (``None`` means the defaults; ``calib`` is a dict of input arrays).

    ``format`` "custom-op" writes records for the onnxcomp ops; "portable" writes standard ONNX ops only.
    ``bits`` and ``sparsity`` are one value or per-kind mappings (missing kinds take the defaults); ``layers``
    are per-layer rules (onnxcomp.recipes.LayerRule or dicts of its fields).

    With calibration data, reconstruction (refitting kept weights, then the shared values) is on unless
    ``reconstruct=False``. ``settings`` maps weight names to ``{"sparsity": s, "bits": b}`` overrides (``"codebook_size": K`` instead of
    bits: a codebook of at most K entries, K between two powers of two allowed), or ``{"skip": True}`` (left dense;
    ``"float16": True`` too stores it as binary16 when half_dense's rules allow). ``sequential`` compresses layer
    by layer in graph order, each fit to the already-compressed upstream layers (needs calibration data).
    ``outliers`` is "auto" (a fraction per weight by measured error, onnxcomp/core/outliers.py) or a fraction of each
    weight's kept values (0: none) stored exactly beside the codebook.
    ``allocation`` "fixed" takes bits and sparsity per kind; "proxy" picks them per weight without data
    (AllocateWeightsPass, onnxcomp/core/allocation.py; ``allocation_scaled`` False leaves out its channel-scaled
    alternatives; ``allocation_scales`` tighten its threshold per weight,
    ``allocation_limits`` set its relative L2 limit per weight (the model-level budget; 0 keeps a weight dense),
    ``allocation_cache`` keeps its measurements between runs).
    ``integer_weights`` ("off", "gather", "conv", "all") picks the int8 / uint8 weights of already-quantized ops that are coded
    losslessly (onnxcomp/passes/integer_weights.py; the custom-op format only). ``share_cache`` keeps each weight's
    sorted values between runs on the same input (ShareWeightsPass; compress's rounds without calibration).
    ``sequential_reuse`` keeps the sequential layers' statistics between runs on the same input, calibration data and
    options that differ only in per-weight settings (CompressSequentiallyPass; the budget's check set).
    ``distill`` (default: on with ``sequential``, which it needs): a fully connected chain's pruned weights and biases
    are fit to the original model's outputs on the calibration inputs between pruning and sharing
    (DistillWeightsPass; other graphs are left to the walk as before: a warning, once, when ``distill`` is True, an
    info line when it is only on by default), and after sharing their codebooks, outlier values and float biases are
    fine-tuned to the same outputs (TuneCodebooksPass).
    """
    if format not in FORMATS:
        raise InvalidOptionError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if min_elements < 1:
        raise InvalidOptionError(f"min-elements {min_elements} must be at least 1")
    if calib_batch < 1:
        raise InvalidOptionError(f"calib-batch {calib_batch} must be at least 1")
    if ridge < 0:
        raise InvalidOptionError(f"ridge {ridge} must be >= 0")
    if prune == "activation" and calib is None:
        raise CalibrationError("activation-aware pruning needs calibration data: pass --calib DATA.npz "
                               "(or --calib random for a smoke test, which is not meaningful)")
    if reconstruct and calib is None:
        raise CalibrationError("reconstruction needs calibration data: pass --calib DATA.npz")
    reconstruct = calib is not None if reconstruct is None else reconstruct
    rules = tuple(r if isinstance(r, LayerRule) else LayerRule(**r) for r in layers)
    if sparsity is None or isinstance(sparsity, Mapping):
        sparsity = {**DEFAULT_SPARSITY, **(sparsity or {})}
    if bits is None or isinstance(bits, Mapping):
        bits = {**DEFAULT_BITS, **(bits or {})}
    if allocation not in ALLOCATIONS:
        raise InvalidOptionError(f"unknown allocation {allocation!r}: use one of {', '.join(ALLOCATIONS)}")
    passes = [FoldRecurrentWeightsPass(), SelectWeightsPass(min_elements=min_elements, rules=rules, check_finite=calib is not None)]
    allocate = None
    if allocation == "proxy":
        allocate = AllocateWeightsPass(scales=allocation_scales, limits=allocation_limits, cache=allocation_cache, seed=seed,
                                       outliers=outliers, scaled=allocation_scaled)
        passes.append(allocate)
    if settings:
        passes.append(ApplySettingsPass(settings=settings))
    if sequential and calib is None:
        raise CalibrationError("--sequential needs calibration data: pass --calib DATA.npz")
    if sequential and scope == "global":
        raise InvalidOptionError("--sequential prunes layer by layer: it cannot take --scope global")
    if distill and not sequential:
        raise InvalidOptionError("--distill fits the pruned layers between the sequential mode's pruning and sharing: "
                                 "give --sequential (and --calib)")
    steps = [PruneWeightsPass(method=prune, score=score, sparsity=sparsity, scope=scope, threshold=threshold,
                              sensitivity=sensitivity, tfidf=tfidf, rules=rules)]
    if reconstruct:
        steps.append(ReconstructWeightsPass(ridge=ridge))
    steps.append(ShareWeightsPass(bits=bits, init=init, seed=seed, refit_codebook=reconstruct, rounding=rounding, rules=rules,
                                  outliers=outliers, outliers_opset=SCATTER_OPSET if format == "portable" else 0,
                                  cache=share_cache if calib is None else None,
                                  matched_uniform=calib is not None and share_weights.MATCHED_UNIFORM))
    if sequential:
        distiller = DistillWeightsPass(data=calib, seed=seed, explicit=bool(distill)) if distill is not False else None
        tuner = TuneCodebooksPass(distilled=distiller) if distiller is not None else None
        passes.append(CompressSequentiallyPass(data=calib, steps=steps, batch=calib_batch, threshold=activation_threshold,
                                               reuse=sequential_reuse, distill=distiller, tune=tuner))
    elif PIPELINED and allocate is not None and not settings and calib is None and scope == "layer":
        passes.remove(allocate)  # each weight allocated, pruned and shared in one go (on the same passes)
        passes.append(AllocateShareWeightsPass(allocate, *steps))
    else:
        keep_gram = reconstruct or needs_gram(prune, score, rules)
        if calib is not None and scope == "layer":  # each layer compressed as soon as its statistics are complete
            passes.append(CalibrateWeightsPass(data=calib, batch=calib_batch, threshold=activation_threshold, keep_gram=keep_gram, steps=steps))
        else:  # global pruning ranks every layer's scores together
            if calib is not None:
                passes.append(CalibrateWeightsPass(data=calib, batch=calib_batch, threshold=activation_threshold, keep_gram=keep_gram))
            passes.extend(steps)
    passes.append(PackPortableWeightsPass() if format == "portable" else PackWeightsPass())
    if integer_weights not in INTEGER_WEIGHTS:
        raise InvalidOptionError(f"unknown integer-weights {integer_weights!r}: use one of {', '.join(INTEGER_WEIGHTS)}")
    if format != "portable":  # standard ops cannot entropy-code: the portable format leaves integer weights as they are
        passes.append(IntegerWeightsPass(policy=integer_weights, min_elements=min_elements, rules=rules))
    return Pipeline(passes)


def compress_model(model: onnx.ModelProto, *, base_dir: str | None = None, **options) -> tuple[onnx.ModelProto, CompressionState]:
    """Compress an in-memory model; returns the rewritten model (records still inline) and the state.

    ``base_dir`` streams: the model's external data (in that folder) is not loaded; each weight is read
    when a pass needs it, each record encoded as soon as its weight is shared and the weight's arrays
    released, and the dense initializers keep pointing at the input's data files (write_compressed copies
    them). The state's targets then hold no indices.
    """
    model_io.constants_to_initializers(model.graph)
    try:
        graph = gs.import_onnx(model)
    except Exception as error:  # graphsurgeon raises many types on malformed graphs
        raise UnsupportedModelError(f"the graph cannot be read: {error}") from error
    # graphsurgeon's graphs and functions hold the model's own opset lists, and its export appends the domains of
    # new nodes to them: a list of the same entries keeps ``model`` as it was (compress gives it the parsed input)
    for part in [graph, *graph.subgraphs(recursive=True), *graph.functions]:
        if part.import_domains is not None:
            part.import_domains = list(part.import_domains)
    unique_node_names(graph)
    initializers = {t.name for t in model.graph.initializer}
    overridable = [value for value in model.graph.input if value.name in initializers]
    state = CompressionState(graph, graph_inputs={value.name for value in overridable})
    constants = {id(t): t for g in all_graphs(graph) for t in g.tensors().values() if isinstance(t, gs.Constant)}
    state.float_params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in constants.values()
                             if onnx_type(t) in (*FLOAT_TYPES, onnx.TensorProto.DOUBLE))
    pipeline = build_pipeline(**options)
    if base_dir is not None:
        model_io.attach_external_values(graph, base_dir)
    steps = [q for p in pipeline.passes for q in (p.steps if isinstance(p, (CalibrateWeightsPass, AllocateShareWeightsPass)) else [p])]
    share = next((p for p in steps if isinstance(p, ShareWeightsPass)), None)  # calibrated: inside the calibration
    pack = next((p for p in pipeline.passes if isinstance(p, PackWeightsPass)), None)
    if share is not None and pack is not None:  # each record is encoded as its weight is shared (on its thread)
        share.encode = functools.partial(pack.encode, release=base_dir is not None)
    pipeline(state)
    if not state.targets:
        return model, state
    exported = gs.export_onnx(graph)
    model_io.hoist_shared_initializers(exported.graph)
    # graphsurgeon drops initializers from the graph inputs; callers may still override them, so keep them listed.
    exported.graph.input.extend(overridable)
    exported.ir_version = model.ir_version
    del exported.opset_import[:]
    exported.opset_import.extend(o for o in model.opset_import if o.domain != DOMAIN)
    if any(t.record is not None for t in state.targets):
        exported.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    for key in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(exported, key, getattr(model, key))
    exported.metadata_props.extend(model.metadata_props)
    exported.functions.extend(model.functions)
    declare_custom_outputs(model, exported)  # shapes onnxruntime's optimiser needs past the custom ops
    return exported, state


def refuse_compressed(model: onnx.ModelProto, path: str) -> None:
    """Raise ``UnsupportedModelError`` when ``model`` was written by ``onnxcomp compress``: it uses onnxcomp's ops
    (custom-op format) or looks weights up in ``*.codebook`` initializers (portable format). Compressing it again
    would only re-quantize quantized weights; the original model is the one to compress."""
    graphs = list(model_io.graphs_of(model.graph))
    if any(o.domain == DOMAIN for o in model.opset_import) or any(n.domain == DOMAIN for g in graphs for n in g.node):
        form = "custom-op format: its weights are records in its sidecar"
    else:
        codebooks = {t.name for g in graphs for t in g.initializer if t.name.endswith(CODEBOOK_SUFFIX)}
        if not any(n.op_type == "Gather" and n.input and n.input[0] in codebooks for g in graphs for n in g.node):
            return
        form = "portable format: its weights are codebook lookups"
    raise UnsupportedModelError(f"{path} is already compressed by onnxcomp ({form}); compress the original model instead")


def _resolve(recipe, config, options, eval_data, calib, calib_samples):
    if recipe is not None or config is not None or options.get("layers"):
        options = recipes.resolve(recipe, config, options)
        eval_data, calib, calib_samples = (value if value is not None else options.pop(key, None) for key, value in
                                           (("eval_data", eval_data), ("calib", calib), ("calib_samples", calib_samples)))
        for key in ("eval_data", "calib", "calib_samples"):
            options.pop(key, None)
        unknown = set(options) - set(inspect.signature(build_pipeline).parameters)
        if unknown:
            raise InvalidOptionError(f"unknown option(s) {', '.join(sorted(unknown))} in the recipe")
        if isinstance(options.get("tfidf"), Mapping):
            from onnxcomp.core.pruning import TfidfParameters
            options["tfidf"] = TfidfParameters(**options["tfidf"])
    return options, eval_data, calib, calib_samples


@progress.with_progress
@staging.writes_output
def compress(input_path: str, output_path: str, *, eval_data: str | None = None, calib: str | None = None,
             calib_samples: int | None = None, recipe=None, config=None, allocation: str = "auto",
             fidelity: bool = True, min_cosine: float | None = None, fidelity_data=None, input_shapes: dict | None = None,
             input_ranges: dict | None = None, keep_names: bool = False, float16_others: bool = False,
             **options) -> Report:
    """Compress ``input_path`` into ``output_path`` plus its sidecar; the Python face of ``onnxcomp compress``.

    ``calib`` is a path (.npz, or a folder of them), "random", or a dict of input arrays; options are those
    of ``build_pipeline``. ``recipe`` names a built-in recipe (or is an ``onnxcomp.recipes.Recipe``), ``config``
    is a recipe file; explicit options override both (see onnxcomp/recipes.py). ``progress=callback`` receives
    ``(step, done, total)`` for the long steps (onnxcomp/progress.py); by default nothing is reported.

    ``allocation`` "auto" (the default) picks bits and sparsity per weight without data (``"proxy"``) unless bits,
    sparsity, per-weight settings, a recipe or layer rules are given (then ``"fixed"``). The output is written
    to a temporary folder beside ``output_path`` and moved into place only when complete and accepted.
    ``fidelity`` measures the output against the input (onnxcomp/pipeline/fidelity.py; on ``fidelity_data``,
    else the calibration data, else inputs synthesised with ``input_shapes``/``input_ranges`` overrides) into
    ``Report.fidelity``. With the proxy allocation, a first round with per-weight limits gives each weight's
    measured gain (``_gains``), then the model-level budget (BUDGET, onnxcomp.core.allocation.solve_budget) sets
    every weight's limit; when that round's min cosine is below 0.99, up to TARGETED_ROUNDS rounds halve the limits
    of only the weights carrying the output error (``_error_carriers``: each weight's measured error alone at its
    allocated error) and keep the first that passes; if none does, the budget of every weight is halved (at most
    BACKOFF_ROUNDS times) until a round passes; on real fidelity inputs (``fidelity_data`` or ``calib``, not synthesised ones) REFINE_ROUNDS rounds at
    the geometric midpoint of the largest passing and smallest failing budgets follow, and the smallest output
    that passed is kept (``Report.backoff``: every measured round once the first missed); if it still misses,
    or the output would not be smaller than the input, or would save less than MIN_SAVING (2 %) of its bytes, the
    input is copied instead (``Report.fallback`` says why). Explicit settings are written as asked (a warning is the caller's to print). ``min_cosine`` makes the check a gate: below it (or when it cannot be
    measured) FidelityError is raised and nothing is written. The output's nodes and intermediate tensors, and the
    initializers the passes made up, get short names (passes/short_names.py: the same computation, fewer bytes)
    unless ``keep_names``. When no weight qualifies (nothing compressed, none stored as float16), whatever the
    options, the output is a copy of the input (byte for byte when it holds its data inline; ``Report.fallback``
    begins NOTHING_TO_COMPRESS and says why, ``Report.skipped`` lists each weight's reason).
    ``float16_others`` (with ``settings``, the budget path's allocations): besides the weights whose setting says
    ``float16``, every float tensor no setting names (biases, normalisation scales, weights below ``min_elements``)
    is stored as float16 where half_dense's rules allow, as the data-free default stores them; a weight whose
    setting keeps it dense without ``float16`` stays float32.
    """
    from onnxcomp.pipeline import fidelity as fidelity_check
    input_path, output_path = os.fspath(input_path), os.fspath(output_path)
    if allocation not in ("auto", *ALLOCATIONS):
        raise InvalidOptionError(f"unknown allocation {allocation!r}: use auto, {', '.join(ALLOCATIONS)}")
    explicit = (recipe is not None or config is not None or options.get("layers") or options.get("settings")
                or options.get("bits") is not None or options.get("sparsity") is not None)
    options, eval_data, calib, calib_samples = _resolve(recipe, config, options, eval_data, calib, calib_samples)
    if allocation == "auto":
        allocation = "fixed" if explicit else "proxy"
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise InvalidOptionError(f"min-cosine {min_cosine} must be in [-1, 1]")
    build_pipeline(calib={} if calib else None, allocation=allocation, **options)  # validate options before any work
    model_io.check_output_path(input_path, output_path)
    graph_only = model_io.load_model(input_path, external_data=False)  # also the clear errors for a bad input
    refuse_compressed(graph_only, input_path)
    if eval_data:
        from onnxcomp.pipeline.evaluate import check_eval_data
        check_eval_data(eval_data, graph_only)
    if isinstance(calib, str):
        from onnxcomp.pipeline.evaluate import load_calibration
        calib = load_calibration(calib, graph_only, calib_samples, seed=options.get("seed", 0))
    measure = fidelity or min_cosine is not None
    feeds, source, unavailable = ([], "", None)
    if measure:
        feeds, source, unavailable = fidelity_check.prepare(
            input_path, data=fidelity_data, calib=calib, shapes=input_shapes, ranges=input_ranges,
            seed=options.get("seed", 0), model=graph_only)
    # Work that does not depend on the step before it runs on threads of its own meanwhile (below: the original's
    # fidelity outputs during the first round, every weight's candidates during the gain measurement).
    background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="onnxcomp-ahead") if AHEAD else _Inline()
    reference: dict = {}  # the original's outputs on the fidelity feeds (fidelity.compare_runs' store)
    stored = None
    # (not beside a calibration pass, which holds sessions of its own: the defaults' path only)
    if (measure and feeds and not unavailable and calib is None
            and model_io.model_bytes(input_path, graph_only) <= ATTRIBUTION_BYTES):
        stored = background.submit(fidelity_check.store_reference, input_path, feeds, graph_only, reference)

    def compare(staged: str):  # fidelity of ``staged`` once the original's outputs are stored (or failed to be)
        if stored is not None:
            stored.result()
        return fidelity_check.compare_runs(input_path, staged, feeds, source, graph_only, reference)

    # named before and created inside the block whose finally removes it: SIGTERM (front/cli.py) can arrive between
    # any two Python steps, and tempfile.mkdtemp has several after its mkdir
    staging = _staging_name(os.path.dirname(os.path.abspath(output_path)))
    reads = contextlib.ExitStack()
    try:
        os.mkdir(staging, 0o700)
        cache: dict = {}
        share_cache = {} if calib is None and model_io.model_bytes(input_path, graph_only) <= SHARE_CACHE_BYTES else None
        if share_cache is not None and only_read(graph_only, options.get("format", "custom-op")):
            # the rounds and gain runs read the weights of graph_only itself: each weight's bytes read once (about the
            # weights' float32 bytes kept until the rounds end, as the share cache keeps their sorted values)
            reads.enter_context(reads_kept())
        # the per-weight measurements' (fidelity.attribute) outputs of the original and errors by decoded value
        measured = {} if model_io.model_bytes(input_path, graph_only) <= SHARE_CACHE_BYTES else None
        opened: set[str] = set()  # staged outputs known to load in onnxruntime
        limits: dict[str, float] | None = None  # None: per-weight proxy limits (round 0)
        history: list[dict] = []
        gains: dict[str, float] | None = None
        budget = BUDGET
        passing = failing = None  # the largest budget measured to pass, the smallest measured to fail
        best = None  # (report, result, staged) of the smallest output that passed in the back-off search
        staged = None
        tightened: list[str] | None = None  # the weights the coming round tightens (a targeted round), else None
        targeted = 0  # targeted rounds run
        scaled = True  # channel-scaled candidates allowed (until the budget is halved)
        for round_ in range(BACKOFF_ROUNDS + REFINE_ROUNDS + TARGETED_ROUNDS + 2):
            if staged is not None and (best is None or staged != best[2]):
                shutil.rmtree(os.path.dirname(staged))  # the previous round's output, not kept
            # Each round writes into its own folder: the back-off search keeps the smallest passing output.
            os.mkdir(os.path.join(staging, str(round_)))
            staged = os.path.join(staging, str(round_), os.path.basename(output_path))
            # Channel-scaled codebooks are tried at the model's budget only (and in the targeted rounds, which measure
            # every weight's error as written): a round at a halved budget writes the unscaled candidates, so one
            # scaled weight the checks let through cannot hold the back-off in place (ppocr-rec: docs/benchmarks.md,
            # channel-scaled codebooks).
            extra = ({"allocation_limits": limits, "allocation_cache": cache, "allocation_scaled": scaled,
                      "share_cache": share_cache} if allocation == "proxy" else {})
            # The proxy's first round is only measured (its output is loaded in onnxruntime only if it is final); a
            # round whose fidelity is measured is loaded by that check (and the load check run only if it fails).
            checked = not (allocation == "proxy" and gains is None) and not (measure and not unavailable)
            report = _compress_once(input_path, staged, calib, loaded=graph_only, allocation=allocation, check=checked,
                                    keep_names=keep_names, float16_others=float16_others, **extra, **options)
            if checked:
                opened.add(staged)
            result = None
            budget_round = allocation == "proxy" and report.layers and gains is None
            if measure and not budget_round:  # round 0 of the proxy is only the start of the budget allocation
                result = fidelity_check.Fidelity("", unavailable=unavailable) if unavailable else compare(staged)
                if result.unavailable:  # the output's session may have failed to open: the load check says
                    check_output_loads(input_path, staged, report.sidecar_path)
                opened.add(staged)
            if allocation != "proxy" or not report.layers:
                break
            if gains is None:  # round 0: measure each weight's effect, then allocate the model's budget
                # round 0's choices, then every weight's candidates fit on threads of their own while the gains are
                # measured (the candidates do not depend on them; the allocators are not touched meanwhile)
                chosen = _round0_choices(cache)
                candidates = background.submit(_candidates, cache)
                gains = _gains(input_path, staged, feeds if measure and not unavailable else [], cache, report, graph_only,
                               chosen, measured)
                budget = BUDGET if gains is not None else BUDGET_UNMEASURED
                gains = gains or {name: 1.0 for name in cache}
            elif result is None or (not result.below and not history):  # passed at the model's budget (or unmeasured)
                break
            else:
                history.append({"min_cosine": result.min_cosine, "bytes": report.output_bytes, "budget": budget,
                                "passed": not result.below, "tightened": tightened or []})
                this_round, tightened = tightened, None
                if this_round is not None and not result.below:  # a targeted round passed: its output is kept
                    best = (report, result, staged)
                    break
                if this_round is None and result.below:
                    failing = budget
                elif this_round is None:
                    passing = budget
                    if best is None or report.output_bytes < best[0].output_bytes:
                        best = (report, result, staged)
                reach = (1 - fidelity_check.WARN_COSINE) * TARGETED_REACH ** (TARGETED_ROUNDS - targeted)
                if (result.below and targeted < TARGETED_ROUNDS and (this_round is not None or len(history) == 1)
                        and 1 - result.min_cosine <= reach):
                    carriers = _error_carriers(input_path, staged, feeds, limits, graph_only, measured)
                    if carriers:  # tighten only these; every other weight keeps its limit
                        targeted += 1
                        log.info("fidelity min cosine %.4f below %.2f: limits of %s x %g", result.min_cosine,
                                 fidelity_check.WARN_COSINE, ", ".join(carriers), BACKOFF_FACTOR)
                        limits = {name: limit * BACKOFF_FACTOR if name in carriers else limit for name, limit in limits.items()}
                        tightened = carriers
                        continue
                if result.below and targeted < TARGETED_ROUNDS and 1 - result.min_cosine > reach:
                    log.info("fidelity min cosine %.4f: too far below %.2f for %d targeted round(s): the budget back-off",
                             result.min_cosine, fidelity_check.WARN_COSINE, TARGETED_ROUNDS - targeted)
                # the budget back-off (after the targeted rounds missed: from the model's budget, every weight)
                scaled = False
                rounds = [h for h in history if not h["tightened"]]
                if passing is None:  # still failing: halve the budget, BACKOFF_ROUNDS times at most
                    if len(rounds) > BACKOFF_ROUNDS:
                        break
                    log.info("fidelity min cosine %.4f below %.2f: budget %.4f -> %.4f", result.min_cosine,
                             fidelity_check.WARN_COSINE, budget, budget * BACKOFF_FACTOR)
                    budget *= BACKOFF_FACTOR
                else:  # search between the passing and the failing budget (geometric midpoints), REFINE_ROUNDS times
                    first = next(i for i, h in enumerate(rounds) if h["passed"])
                    if len(rounds) - 1 - first >= (0 if source == "synthesised" else REFINE_ROUNDS):
                        break
                    log.info("back-off search: min cosine %.4f at budget %.4f: budget -> %.4f", result.min_cosine,
                             budget, math.sqrt(passing * failing))
                    budget = math.sqrt(passing * failing)
            limits = _budget_limits(cache, gains, budget, report, candidates.result())
        share_cache = measured = None  # (the rounds are over: its sorted weights and sessions are not needed)
        reads.close()
        if best is not None:  # the smallest output that passed (the search's last round may have failed)
            report, result, staged = best
        if staged not in opened:
            check_output_loads(input_path, staged, report.sidecar_path)
        report.allocation, report.backoff = allocation, history
        fallback = None
        if not report.layers and not report.float16:  # nothing compressed, nothing stored as float16
            fallback = nothing_to_compress(report.skipped, options.get("min_elements", 1024))
        elif allocation == "proxy" and report.layers and report.output_bytes >= report.input_bytes:
            fallback = (f"compression would not shrink the model ({report.output_bytes:,} >= {report.input_bytes:,} bytes): "
                        "the output is a copy of the input")
        elif allocation == "proxy" and report.layers and report.output_bytes > report.input_bytes * (1 - MIN_SAVING):
            # e.g. an already quantised model with a few float tensors: custom ops, a sidecar and their (small)
            # error for almost nothing
            fallback = (f"compression would save only {1 - report.output_bytes / report.input_bytes:.1%} of the model "
                        f"({report.output_bytes:,} of {report.input_bytes:,} bytes; less than {MIN_SAVING:.0%}): "
                        "the output is a copy of the input")
        elif allocation == "proxy" and result is not None and result.below and report.layers:
            fallback = (f"min cosine {result.min_cosine:.4f} stayed below {fidelity_check.WARN_COSINE} after "
                        f"{len(history)} back-off rounds: the output is a copy of the input")
        if fallback:
            float_params, skipped, nothing = report.float_params, report.skipped, not report.layers
            report = _copy_input(input_path, staged)
            report.float_params = float_params  # nothing of them is compressed: coverage 0
            report.allocation, report.backoff, report.fallback = allocation, history, fallback
            if nothing:  # why each tensor was left as it is; the round's fidelity measured the same computation
                report.skipped = skipped
            else:
                result = fidelity_check.Fidelity(source or "", unavailable=unavailable) if unavailable else (
                    compare(staged) if measure else None)
        report.fidelity = None if result is None else result.to_dict()
        if min_cosine is not None:
            if result.unavailable:
                raise FidelityError(f"--min-cosine {min_cosine} cannot be checked: {result.unavailable}; nothing was written")
            if not result.min_cosine >= min_cosine:
                raise FidelityError(f"min cosine {result.min_cosine:.4f} on {result.samples} {result.inputs} inputs is below "
                                    f"--min-cosine {min_cosine}: nothing was written")
        if eval_data:
            from onnxcomp.pipeline.evaluate import accuracy
            report.accuracy_before = accuracy(input_path, eval_data)
            report.accuracy_after = accuracy(staged, eval_data, compressed=report.sidecar_path is not None)
        report.sidecar_path = model_io.install_staged(staged, output_path)
        report.output_path = output_path
        background.shutdown(wait=True)
        return report
    except BaseException:  # an error, SIGTERM, Ctrl-C: its results are not needed; clean up now, not after it
        background.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        reads.close()
        _remove_folder(staging)


def _staging_name(folder: str) -> str:
    """A path in ``folder`` for compress's staging folder (this process's ``staging.owned_prefix`` and 16 random hex
    digits), not yet taken."""
    import secrets
    prefix = staging.owned_prefix(folder)
    while True:
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(8)}")
        if not os.path.lexists(path):
            return path


def _remove_folder(path: str, attempts: int = 100) -> None:
    """Remove ``path`` (a folder, or nothing there). Retried while it is still there: on SIGTERM or an error, worker
    threads left running (parallel._pool) may add a file while shutil.rmtree empties it (its rmdir then fails)."""
    import time
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.01)


def _gains(input_path: str, staged: str, feeds: list[dict], cache: dict, report: Report,
           loaded: onnx.ModelProto | None = None, chosen: dict | None = None,
           measured_cache: dict | None = None) -> dict[str, float] | None:
    """Per weight (the allocator's ``cache`` keys): the measured gain g = r / e2 of its effect on the output r
    (fidelity.attribute, on ATTRIBUTION_SAMPLES samples of the first feed) over its predicted relative L2 error e2,
    divided by the median gain and clipped to GAIN_RANGE (the median stands for weights not compressed in this
    round). Relative, because on synthesised inputs only the ratios between weights mean something: a classifier's
    outputs on random images are small and uncertain, and their absolute error says little about real inputs.
    None without feeds or when the model cannot be run on them. Models above ATTRIBUTION_BYTES get gains of 1
    (the measurement holds copies of the whole model in memory, and protobuf serialises at most 2 GiB). ``loaded``:
    the input as model_io.load_model(input_path, external_data=False) gave it (not parsed again); ``chosen``: round
    0's choices (_round0_choices), when already taken; ``measured_cache``: _attribution's."""
    if not feeds:
        return None
    if model_io.model_bytes(input_path, loaded) > ATTRIBUTION_BYTES:
        return {name: 1.0 for name in cache}
    errors = _attribution(input_path, staged, feeds, loaded, measured_cache)
    if errors is None:
        return None
    compressed = {layer.name for layer in report.layers}
    measured = {}
    for name, choice in (chosen if chosen is not None else _round0_choices(cache)).items():
        if name in errors and name in compressed and choice is not None and choice.relative_l2 > 0:
            measured[name] = errors[name] / choice.relative_l2
    median = float(np.median(list(measured.values()))) if measured else 1.0
    log.info("measured gains (output error / weight error): median %.3g, %s", median,
             ", ".join(f"{n} {g:.3g}" for n, g in sorted(measured.items(), key=lambda x: -x[1])[:8]))
    if not median > 0:
        return {name: 1.0 for name in cache}
    low, high = GAIN_RANGE
    return {name: float(np.clip(measured.get(name, median) / median, low, high)) for name in cache}


def _attribution(input_path: str, staged: str, feeds: list[dict], loaded: onnx.ModelProto | None,
                 cache: dict | None = None) -> dict[str, float] | None:
    """fidelity.attribute of the output at ``staged`` on ATTRIBUTION_SAMPLES samples of the first feed (weight name ->
    relative output error with that weight alone decoded); None when onnxruntime cannot run the model on them.
    ``cache``: attribute's, kept by compress between its rounds (the original's outputs, and each weight's error
    under its decoded value, are not computed again)."""
    from onnxcomp.pipeline.fidelity import attribute
    count = next((len(v) for v in feeds[0].values() if np.ndim(v)), 0)
    feed = {k: (v[:ATTRIBUTION_SAMPLES] if np.ndim(v) and len(v) == count else v) for k, v in feeds[0].items()}
    try:
        return attribute(input_path, staged, feed, loaded, cache=cache, cones=True)
    except Exception as error:  # onnxruntime's own errors (a feed the model takes only whole)
        log.info("per-weight effect not measured (%s)", str(error).strip().splitlines()[0])
        return None
    finally:
        parallel.release_free_memory()  # the decoded weights and model copies of the runs


def _error_carriers(input_path: str, staged: str, feeds: list[dict], limits: dict[str, float],
                    loaded: onnx.ModelProto | None = None, measured_cache: dict | None = None) -> list[str]:
    """The weights of the output at ``staged`` that carry its error: each weight's relative output error alone at its
    allocated error (fidelity.attribute on ATTRIBUTION_SAMPLES samples of the first feed, as ``_gains``), and of the
    weights compressed under a limit (``limits`` > 0) the smallest set of the largest errors whose squares reach
    TARGETED_SHARE of their sum (ties by name). Errors add as independent terms in the budget's model
    (sqrt(sum (g e2)^2)), so these weights hold at least that share of the predicted output error. Empty without
    feeds, when the model cannot be run on them, or when no weight has an error. ``measured_cache``: _attribution's."""
    if not feeds or model_io.model_bytes(input_path, loaded) > ATTRIBUTION_BYTES:
        return []
    errors = _attribution(input_path, staged, feeds, loaded, measured_cache)
    if errors is None:  # the back-off halves every weight's budget instead
        return []
    ranked = sorted(((e, n) for n, e in errors.items() if limits.get(n, 0.0) > 0 and e > 0 and math.isfinite(e)),
                    key=lambda item: (-item[0], item[1]))
    total = sum(e * e for e, _ in ranked)
    carriers, held = [], 0.0
    for e, name in ranked:
        if held >= TARGETED_SHARE * total:
            break
        carriers.append(name)
        held += e * e
    log.info("output error alone per weight: %s", ", ".join(f"{n} {e:.3g}" for e, n in ranked[:8]))
    return carriers


class _Inline:
    """The executor of AHEAD False: each job runs when submitted, on the caller's thread (the straightforward
    order, which tests compare with the threaded one)."""

    def submit(self, function, *args) -> Future:
        future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # kept for result(), as a thread pool keeps it
            future.set_exception(error)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _round0_choices(cache: dict) -> dict:
    """Per weight (the allocator ``cache``'s keys), round 0's choice: the per-weight proxy's (its measurements are
    cached), or None."""
    return {name: allocator.choose(1.0, 4.0 * allocator.n_total, uniform=False) for name, allocator in cache.items()}


def _candidates(cache: dict) -> dict[str, list]:
    """Per weight, every candidate of the model-level budget allocation (onnxcomp.core.allocation.options), fit on
    the cores (weights are independent; each allocator on one thread). They do not depend on the gains or the
    budget (the allocators cache their measurements: later calls only collect them)."""
    from onnxcomp.core import allocation as allocation_math
    names = sorted(cache)
    found = parallel.ordered_map(lambda name: allocation_math.options(cache[name], 4.0 * cache[name].n_total), names)
    return dict(zip(names, found))


def _budget_limits(cache: dict, gains: dict[str, float], budget: float, report: Report,
                   choices: dict[str, list] | None = None) -> dict[str, float]:
    """Per weight, the relative L2 limit of its candidate in the model-level budget allocation
    (onnxcomp.core.allocation.solve_budget); 0 for a weight best left dense. ``choices``: _candidates(cache), when
    already fit."""
    from onnxcomp.core import allocation as allocation_math
    choices = choices if choices is not None else _candidates(cache)
    chosen = allocation_math.solve_budget(choices, gains, budget)
    return {name: 0.0 if c.dense else c.relative_l2 * (1 + 1e-9) for name, c in chosen.items()}


def nothing_to_compress(skipped: list[tuple[str, str]], min_elements: int) -> str:
    """``Report.fallback`` of a compress that compressed no weight (and stored none as float16): what it says, and why."""
    why = (f"none of the {len(skipped)} weight{'s' if len(skipped) != 1 else ''} it considered qualifies (each is "
           "listed with its reason)" if skipped else
           f"the model has no float weight of at least {min_elements:,} elements")
    return f"{NOTHING_TO_COMPRESS}: {why}; the output is a copy of the input"


def _copy_input(input_path: str, staged: str) -> Report:
    """The input model at ``staged``: its bytes copied when it keeps every tensor inline; with external data, the
    model written with them inlined or copied as write_compressed does (its data files' names are the input's)."""
    model = model_io.load_model(input_path, external_data=False)
    _remove_companions(staged)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for g in model_io.graphs_of(model.graph) for t in g.initializer):
        model_io.write_compressed(model, [], staged, source_folder=os.path.dirname(os.path.abspath(input_path)))
    else:
        shutil.copyfile(input_path, staged)
    return Report(input_path, staged, None, model_io.model_bytes(input_path), model_io.model_bytes(staged))


def _remove_companions(staged: str) -> None:
    """Remove the sidecar and data file an earlier round wrote beside ``staged``: a round that writes none must
    not leave the earlier one's to be installed with it."""
    for leftover in (sidecar.sidecar_path(staged), model_io.dense_data_path(staged)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)


def _compress_once(input_path: str, output_path: str, calib: dict | None, loaded: onnx.ModelProto | None = None,
                   check: bool = True, keep_names: bool = False, float16_others: bool = False, **options) -> Report:
    """One compression of ``input_path`` written to ``output_path`` (a staging path) and its report. ``loaded``: the
    input as model_io.load_model(input_path, external_data=False) gave it (read and checked once per compress;
    the passes work on it as it is when only_read allows, else on a copy). ``check``: open the output in onnxruntime
    (check_output_loads); the caller does it later when not. ``keep_names``: the nodes and intermediate tensors keep
    the input's names (else short ones, passes/short_names.py)."""
    # External data is read one weight at a time (calibration runs the model in segments of weights); only the
    # sequential mode, which rewrites the model layer by layer, loads it whole.
    stream = calib is None or not options.get("sequential")
    if stream and loaded is not None and only_read(loaded, options.get("format", "custom-op")):  # no copy (0.06 s, 100 MB: mlp25m)
        model = loaded
    elif stream and loaded is not None:
        model = onnx.ModelProto()
        model.CopyFrom(loaded)
    else:
        model = model_io.load_model(input_path, external_data=not stream)
    if calib is not None:
        options["calib"] = calib
    source_folder = os.path.dirname(os.path.abspath(input_path))
    # the tensors the fidelity check reads from the output besides its outputs keep their names
    from onnxcomp.pipeline.fidelity import logit_taps
    tapped = set(logit_taps(loaded if loaded is not None else model).values())
    # the names the input had: the initializers the writer makes up (records, float16 copies, folds' constants) get
    # short ones too (the portable format's codebooks and indices keep theirs: inspect finds them by name)
    before = None if keep_names or options.get("format", "custom-op") == "portable" else input_names(
        loaded if loaded is not None else model)
    compressed, state = compress_model(model, base_dir=source_folder if stream else None, **options)
    if compressed is loaded:  # nothing compressed: the model itself came back, and what follows writes into it
        compressed = onnx.ModelProto()
        compressed.CopyFrom(loaded)
    records = [(t.name, t.record_name, t.record, t.transposed) for t in state.targets if t.record is not None]
    halved = []
    # Weights left dense as float16: every one half_dense's rules allow with the data-free default (not when only
    # integer weights were coded losslessly: the output of an already-quantized model then computes exactly what
    # the input did), else those a budget allocation's settings mark float16, and with ``float16_others`` every
    # tensor its settings do not name (those a setting keeps dense as float32 stay so).
    settings = options.get("settings") or {}
    chosen = {n for n, s in settings.items() if s.get("float16")}
    proxy = options.get("allocation") == "proxy" and any(t.record is not None and t.kind != "integer" for t in state.targets)
    others = float16_others and bool(settings)
    if proxy or chosen or others:
        from onnxcomp.passes.half_dense import halve_dense_weights
        kept = {n for n, s in settings.items() if s.get("skip") and not s.get("float16")} if others else None
        halved = halve_dense_weights(compressed, None if proxy or others else chosen, exclude=kept,
                                     biases=state.folded_biases)
    drop_inferable_value_info(compressed)  # what onnxruntime infers anyway (and shorter symbolic dim names)
    renamed = {} if keep_names else shorten_names(compressed, keep=tapped, before=before)
    if renamed:  # the record initializers' new names
        short = {old: new for new, old in renamed.items() if old}
        records = [(weight, short.get(record_name, record_name), record, transposed)
                   for weight, record_name, record, transposed in records]
    _remove_companions(output_path)
    sidecar_file = model_io.write_compressed(compressed, records, output_path, source_folder=source_folder)
    if check:
        check_output_loads(input_path, output_path, sidecar_file)
    output_bytes = model_io.model_bytes(output_path)  # the model, its sidecar and any dense data file
    report = Report(input_path, output_path, sidecar_file, model_io.model_bytes(input_path, loaded), output_bytes, skipped=state.skipped,
                    float_params=state.float_params, float16=halved, names=renamed)
    for t in state.targets:
        report.layers.append(LayerReport(t.name, t.kind, list(t.shape), t.size, round(t.sparsity, 6), len(t.codebook),
                                         t.bits, t.dense_bytes, len(t.record) if t.record is not None else portable_bytes(t, state.graph.opset or 0),
                                         len(t.outlier_positions)))
    parallel.release_free_memory()  # the round's per-weight arrays, freed on the worker threads
    return report


def only_read(model: onnx.ModelProto, format: str = "custom-op") -> bool:
    """Whether compress_model leaves ``model`` as it was, so the caller's parsed input can be given to it without a
    copy: the custom-op format (the portable one renames the constants it replaces, and graphsurgeon's export sets
    a kept tensor's proto name to its graph name) and no Constant node in any graph (constants_to_initializers
    would move them into initializers). Everything else only reads it: graphsurgeon's import reads the protos, its
    export copies each tensor it keeps into the exported graph (and appends domains to lists compress_model gives
    it), and the passes work on the graphsurgeon graph.
    tests/test_fast_paths.py checks that the input is unchanged byte for byte and the output the same as from a copy."""
    return format != "portable" and not any(node.op_type == "Constant" for graph in model_io.graphs_of(model.graph)
                                            for node in graph.node)


def _opens(path: str, custom: bool) -> str | None:
    """None if onnxruntime (with the custom-op library when ``custom``) opens ``path``, else its error's first line."""
    import onnxruntime as ort
    from onnxcomp.runtime import session_options
    options = session_options() if custom else ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # loading is the check: keep it cheap
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the check says nothing unless it fails (onnxruntime warns about harmless things)
    try:
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return None


def check_output_loads(input_path: str, output_path: str, sidecar_file: str | None) -> None:
    """The written output must load in onnxruntime: if it does not (and the input does), it is removed and an
    OutputError raised, so success is never reported for an output that cannot run. An input onnxruntime cannot
    load either (ops it lacks) only gets a warning."""
    problem = _opens(output_path, sidecar_file is not None)
    if problem is None:
        return
    if _opens(input_path, False) is not None:
        log.warning("onnxruntime cannot load %s (%s), nor the input: the output is written unchecked", output_path, problem)
        return
    for path in (output_path, sidecar_file):
        if path:
            with contextlib.suppress(OSError):
                os.remove(path)
    raise OutputError(f"internal error: the compressed model does not load in onnxruntime ({problem}); nothing was written, "
                      "please report it with the model")


def decoded_weights(sidecar_file: str) -> dict[str, np.ndarray]:
    """Every weight of a sidecar decoded by the numpy reference decoder, in its original orientation."""
    from onnxcomp.core import sidecar
    weights = {}
    with open(sidecar_file, "rb") as f:
        data = f.read()
    for entry in sidecar.read_directory(sidecar_file):
        dense = sidecar.decode_record(data[entry.offset:entry.offset + entry.length]).to_dense()
        weights[entry.name] = dense.T if entry.transposed else dense
    return weights
