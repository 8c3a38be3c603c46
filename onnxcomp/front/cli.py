"""The ``onnxcomp`` command line: a thin typer front over ``onnxcomp.pipeline``."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
import typer.core

from onnxcomp.errors import OnnxcompError, OutputError
from onnxcomp.front.terminal import print_table

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions


class Commands(typer.core.TyperGroup):
    """onnxcomp's command group: a usage error is one line (``error: ...``) like every other error, with the
    help command to run, instead of click's boxed message; its exit code (2) is kept."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError:  # the help was printed when the error was made
            sys.exit(2)
        except click_exceptions.ClickException as error:
            typer.echo(f"error: {usage_message(error)}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_message(error) -> str:
    """A click error as one line, ending with the help command of the command it concerns."""
    message = " ".join(line.strip() for line in error.format_message().splitlines() if line.strip())
    context = getattr(error, "ctx", None)
    if context is not None and isinstance(error, click_exceptions.UsageError):
        message += f" (see: {context.command_path} --help)"
    return message


app = typer.Typer(cls=Commands, add_completion=False, no_args_is_help=True, help="Deep Compression for ONNX models.")


class PruneMethod(str, Enum):
    magnitude = "magnitude"
    activation = "activation"
    none = "none"


class Score(str, Enum):
    wanda = "wanda"
    tfidf = "tfidf"
    obs = "obs"


class Rounding(str, Enum):
    obs = "obs"
    nearest = "nearest"


class Threshold(str, Enum):
    percentile = "percentile"
    sensitivity = "sensitivity"


class Scope(str, Enum):
    layer = "layer"
    global_ = "global"


class Format(str, Enum):
    custom_op = "custom-op"
    portable = "portable"


class IntegerWeights(str, Enum):
    off = "off"
    gather = "gather"
    conv = "conv"
    all = "all"


class Init(str, Enum):
    quantile = "quantile"
    linear = "linear"


@app.callback()
def main() -> None:
    """Compress ONNX models: prune, share weights through k-means codebooks, Huffman-code the indices."""


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    if quiet:  # quiet means quiet: graphsurgeon has its own logger, printing to the terminal
        from onnx_graphsurgeon.logger import G_LOGGER
        G_LOGGER.severity = G_LOGGER.CRITICAL


@contextlib.contextmanager
def _user_errors(debug: bool):
    """Turn onnxcomp's errors into a one-line message and exit code 1 (tracebacks with --debug); progress bars
    end first, so nothing is drawn after the result or the error."""
    from onnxcomp.front.terminal import close_progress_bars
    try:
        try:
            yield
        finally:
            close_progress_bars()
    except OnnxcompError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        from onnxcomp.errors import FidelityError
        raise typer.Exit(4 if isinstance(error, FidelityError) else 1) from error
    except Exception as error:  # a bug, not the user's fault: still one line, with a way to get the details
        if debug:
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        typer.echo(f"error: internal error ({type(error).__name__}: {first_line}); "
                   "rerun with --debug and report the traceback", err=True)
        raise typer.Exit(1) from error


def _progress(quiet: bool, lines: bool = False):
    """Progress bars on stderr when it is a terminal and not --quiet (onnxcomp/front/terminal.py), else None; with
    ``lines`` (long commands such as --budget), one line per step when stderr is not a terminal."""
    from onnxcomp.front.terminal import progress_bars, progress_bars_or_lines
    return progress_bars_or_lines(quiet) if lines else progress_bars(quiet)


QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (no progress bars either).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Log each decision.")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def _bits_option(value: Optional[int], kind: str) -> None:
    if value is not None and not 1 <= value <= 16:
        raise typer.BadParameter(f"{value} is out of range: give an integer from 1 to 16", param_hint=f"--{kind}")


PIPELINE_OPTIONS = ("prune", "score", "sparsity", "threshold", "sensitivity", "scope", "init", "min_elements", "seed",
                    "calib_batch", "activation_threshold", "reconstruct", "ridge", "format", "sequential", "rounding",
                    "outliers", "integer_weights", "distill")


@app.command()
def compress(
    ctx: typer.Context,
    input_path: Path = typer.Argument(..., metavar="IN", help="The ONNX model to compress (never modified)."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="The compressed model; its sidecar OUT-stem.onnxcomp goes beside it."),
    prune: PruneMethod = typer.Option(PruneMethod.magnitude, help="Pruning: by |w|, by activation-aware --score (needs --calib), or none."),
    score: Score = typer.Option(Score.wanda, help="Activation-aware score: wanda |w|*||x||, tfidf, or obs (Optimal Brain Surgeon, with updates; docs/guide.md)."),
    sparsity: Optional[float] = typer.Option(None, min=0.0, max=0.999, help="Fraction of weights pruned in every layer (default: per kind, see docs/guide.md)."),
    threshold: Threshold = typer.Option(Threshold.percentile, help="percentile: prune the --sparsity fraction; sensitivity: prune scores below --sensitivity x std."),
    sensitivity: float = typer.Option(1.0, min=0.0, help="Multiplier of the score std for --threshold sensitivity."),
    scope: Scope = typer.Option(Scope.layer, help="Prune each layer by itself, or all layers against one threshold."),
    calib: Optional[str] = typer.Option(None, help="Calibration inputs: .npz keyed by input name (or a folder of them); 'random' for smoke tests only."),
    calib_samples: Optional[int] = typer.Option(None, min=1, help="Use at most this many calibration samples."),
    calib_batch: int = typer.Option(64, min=1, help="Calibration batch size."),
    activation_threshold: float = typer.Option(0.0, help="An input 'fires' above this value (tfidf statistics)."),
    reconstruct: Optional[bool] = typer.Option(None, "--reconstruct/--no-reconstruct", help="Least-squares refit of kept weights and codebooks (default: on with --calib)."),
    sequential: bool = typer.Option(False, "--sequential", help="With --calib: compress layer by layer in graph order, each refit to the layers compressed before it."),
    distill: Optional[bool] = typer.Option(None, "--distill/--no-distill", help="With --sequential: fit a fully connected chain's kept weights and biases to the original model's outputs on the calibration inputs between pruning and sharing (knowledge distillation), and its shared codebooks, outliers and float biases after sharing (codebook fine-tuning; default: on with --sequential; other graphs are left as they are)."),
    ridge: float = typer.Option(1e-2, min=0.0, help="Ridge regularisation of the refit, relative to the mean input energy."),
    rounding: Rounding = typer.Option(Rounding.obs, help="With --calib: obs rounds weights to the codebook compensating each error in the weights not yet rounded; nearest rounds each alone."),
    outliers: str = typer.Option("auto", help="Weights kept exact beside each codebook: auto (a fraction per layer chosen by measured error, 0 allowed), or a fraction of each layer's kept weights, e.g. 0.005 (0: none)."),
    budget: Optional[str] = typer.Option(None, help="Smallest model within a quality budget, e.g. top1=0.99, accuracy=-1 (points), cosine=0.99, rel_l2=0.05, kl=0.05 (needs --calib)."),
    holdout: float = typer.Option(0.25, min=0.01, max=0.99, help="With --budget: fraction of calibration samples held back to measure quality while searching."),
    check: float = typer.Option(0.25, min=0.0, max=0.98, help="With --budget: fraction of calibration samples kept apart as a final check set the search never sees (0: none)."),
    cache_dir: Optional[Path] = typer.Option(None, help="With --budget: where sensitivity curves are cached (default ~/.cache/onnxcomp)."),
    budget_output: Optional[List[str]] = typer.Option(None, help="With --budget: the output the budget measures, the one your application reads (default: the first output that depends on a weight), or a numpy-style slice of it on one axis, e.g. 'output[..., 4:6]'; given more than once (rel_l2, cosine), the parts balanced, each scaled by 1/its RMS: a detector's boxes and scores."),
    tfidf_power: float = typer.Option(1.0, help="tfidf: power p on |w|."),
    tfidf_smoothing: float = typer.Option(1.0, min=0.0, help="tfidf: smoothing added to firing counts."),
    tfidf_constant: float = typer.Option(1.0, help="tfidf: constant added to the IDF."),
    tfidf_exponent: float = typer.Option(1.0, help="tfidf: exponent on TF x IDF."),
    bits: Optional[int] = typer.Option(None, help="Codebook bits for every layer, 1-16 (default: per kind)."),
    fc_bits: Optional[int] = typer.Option(None, help="Codebook bits for fully connected (Gemm/MatMul) weights."),
    conv_bits: Optional[int] = typer.Option(None, help="Codebook bits for Conv/ConvTranspose weights."),
    embedding_bits: Optional[int] = typer.Option(None, help="Codebook bits for Gather tables (embeddings)."),
    init: Init = typer.Option(Init.quantile, help="Codebook initialisation before k-means."),
    recipe: Optional[str] = typer.Option(None, help="A built-in recipe (see: onnxcomp recipes); explicit options override it."),
    config: Optional[Path] = typer.Option(None, help="A recipe file (TOML): options and per-layer rules by name pattern (docs/guide.md)."),
    format: Format = typer.Option(Format.custom_op, "--format", help="custom-op: Huffman-coded sidecar + onnxcomp ops, the smallest; portable: standard ONNX ops only, no sidecar, no library, larger (7.5x against 13.4x on LeNet-300-100, docs/guide.md)."),
    min_elements: int = typer.Option(1024, min=1, help="Leave weights with fewer elements dense."),
    integer_weights: IntegerWeights = typer.Option(IntegerWeights.gather, help="int8/uint8 weights of already-quantized models (quantize_dynamic) coded losslessly, outputs bit-identical: gather = Gather tables (embeddings; run time unchanged); conv = also ConvInteger weights; all = also MatMulInteger and DynamicQuantizeLSTM weights (conv and all: smaller files, slower runs, since onnxruntime no longer sees those weights as constants; docs/guide.md); off = none."),
    seed: int = typer.Option(0, help="Seed for every random choice (k-means sampling)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz with model inputs and 'labels': print top-1 accuracy before and after."),
    report: Optional[Path] = typer.Option(None, help="Write the per-layer report as JSON here (schema: docs/report.md)."),
    html: Optional[Path] = typer.Option(None, help="Write a self-contained HTML page with per-layer plots and weight histograms (needs matplotlib: pip install 'onnxcomp\\[report]')."),  # \\[ shows "[" (rich markup)
    min_cosine: Optional[float] = typer.Option(None, min=-1.0, max=1.0, help="Gate: if the output's min cosine against the input is below this (or cannot be measured), exit 4 and write nothing."),
    fidelity_data: Optional[Path] = typer.Option(None, help="Real inputs (.npz keyed by input name) for the fidelity check (default: --calib data, else synthesised inputs)."),
    input_shape: Optional[list[str]] = typer.Option(None, help="Shape of a synthesised input, NAME=D0,D1,... (repeatable), e.g. image=1,3,224,224."),
    input_range: Optional[list[str]] = typer.Option(None, help="Value range of a synthesised input, NAME=LO,HI (repeatable; integers inclusive), e.g. sr=16000,16000."),
    fidelity: bool = typer.Option(True, "--fidelity/--no-fidelity", help="Measure the output against the input after compressing (docs/guide.md)."),
    keep_names: bool = typer.Option(False, "--keep-names", help="Keep the input's node and intermediate tensor names (default: short ones, the same computation in fewer bytes; docs/guide.md)."),
    quiet: bool = QUIET, verbose: bool = VERBOSE, debug: bool = DEBUG,
) -> None:
    """Compress IN into OUT plus a sidecar file (the options most runs need first; docs/guide.md).

    Example: onnxcomp compress model.onnx small.onnx --eval data.npz
    """
    for value, kind in ((bits, "bits"), (fc_bits, "fc-bits"), (conv_bits, "conv-bits"), (embedding_bits, "embedding-bits")):
        _bits_option(value, kind)
    _setup_logging(quiet, verbose)
    from onnxcomp.pipeline.compression import compress as run
    from onnxcomp.core.pruning import TfidfParameters
    # Only options given on the command line are passed, so that a recipe's values are not hidden by defaults.
    given = {name for name, value in ctx.params.items()
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    values = {name: value.value if isinstance(value, Enum) else value for name, value in ctx.params.items()}
    options = {name: values[name] for name in PIPELINE_OPTIONS if name in given or (recipe is None and config is None)}
    per_kind = {} if bits is None else {kind: bits for kind in ("conv", "fc", "embedding", "other")}
    for kind, value in (("fc", fc_bits), ("conv", conv_bits), ("embedding", embedding_bits)):
        if value is not None:
            per_kind[kind] = value
    if per_kind:
        options["bits"] = per_kind
    if given & {"tfidf_power", "tfidf_smoothing", "tfidf_constant", "tfidf_exponent"} or (recipe is None and config is None):
        options["tfidf"] = TfidfParameters(tfidf_power, tfidf_smoothing, tfidf_constant, tfidf_exponent)
    with _user_errors(debug):
        from onnxcomp.pipeline.fidelity import parse_overrides
        shapes, ranges = parse_overrides(input_shape, input_range)
        fidelity_options = dict(fidelity=fidelity, min_cosine=min_cosine, fidelity_data=str(fidelity_data) if fidelity_data else None,
                     input_shapes=shapes, input_ranges=ranges)
        if budget_output and not budget:
            raise OnnxcompError("--budget-output names the output a --budget measures: give --budget too")
        if budget:
            from onnxcomp.pipeline.autotune import compress_to_budget
            result = compress_to_budget(str(input_path), str(output_path), budget=budget, calib=calib, calib_samples=calib_samples,
                                        holdout=holdout, check=check, cache_dir=str(cache_dir) if cache_dir else None, prune=values["prune"],
                                        score=values["score"], reconstruct=reconstruct is not False, ridge=ridge, rounding=values["rounding"],
                                        sequential=sequential, outliers=outliers, distill=distill,
                                        init=values["init"], seed=seed, min_elements=min_elements,
                                        eval_data=str(eval_data) if eval_data else None, budget_output=list(budget_output) if budget_output else None,
                                        progress=_progress(quiet, lines=True), keep_names=keep_names,
                                        **fidelity_options)
        else:
            result = run(str(input_path), str(output_path), recipe=recipe, config=str(config) if config else None,
                         calib=calib, calib_samples=calib_samples, eval_data=str(eval_data) if eval_data else None,
                         progress=_progress(quiet), keep_names=keep_names, **fidelity_options, **options)
        if report:
            try:
                report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            except OSError as error:
                raise OutputError(f"cannot write the report {report}: {error.strerror or error} "
                                  f"(the compressed model was written)") from error
        if html:
            from onnxcomp.front.html_report import write_html
            write_html(result, html)
    if not quiet:
        _print_summary(result)


# compress --help: the options most runs need stay in the first panel, the rest are grouped below it.
COMPRESS_PANELS = {
    "Pruning": ("prune", "score", "threshold", "sensitivity", "scope", "min_elements", "activation_threshold",
                "tfidf_power", "tfidf_smoothing", "tfidf_constant", "tfidf_exponent"),
    "Weight sharing (k-means codebooks)": ("fc_bits", "conv_bits", "embedding_bits", "init", "outliers", "seed",
                                           "integer_weights"),
    "Calibration and refit (with --calib)": ("calib_samples", "calib_batch", "reconstruct", "sequential", "distill",
                                             "ridge", "rounding"),
    "Quality budget (with --budget)": ("check", "holdout", "cache_dir", "budget_output"),
    "Reports and recipe files": ("report", "html", "config", "keep_names"),
    "Fidelity check (after compressing)": ("min_cosine", "fidelity", "fidelity_data", "input_shape", "input_range"),
}


def _help_panels(command, panels: dict[str, tuple[str, ...]]) -> None:
    """Put ``command``'s options into rich help panels by parameter name (unlisted ones stay in "Options")."""
    for name, parameter in inspect.signature(command).parameters.items():
        for panel, names in panels.items():
            if name in names:
                parameter.default.rich_help_panel = panel


_help_panels(compress, COMPRESS_PANELS)


SUMMARY_COLUMNS = (("weight", "left"), ("kind", "left"), ("shape", "left"), ("sparsity", "right"), ("K", "right"),
                   ("before", "right"), ("after", "right"), ("ratio", "right"))


def _print_summary(result) -> None:
    from onnxcomp.pipeline.compression import NOTHING_TO_COMPRESS
    nothing = bool(result.fallback) and result.fallback.startswith(NOTHING_TO_COMPRESS)
    if nothing:  # said first, plainly; the tensors' reasons follow
        typer.echo(f"{NOTHING_TO_COMPRESS} in {result.input_path}: {result.fallback[len(NOTHING_TO_COMPRESS) + 2:]} "
                   f"({result.output_path})")
    elif result.fallback:
        pass  # the fallback line below says why the output is a copy
    elif not result.layers:
        typer.echo(f"nothing compressed in {result.input_path}; {result.output_path} holds the same weights, "
                   "some stored as float16, and no sidecar")
    else:
        print_table(SUMMARY_COLUMNS, ([layer.name, layer.kind, "x".join(map(str, layer.shape)), f"{layer.sparsity:.1%}",
                                       str(layer.codebook_size), f"{layer.bytes_before:,}", f"{layer.bytes_after:,}",
                                       f"{layer.ratio:.1f}x"] for layer in result.layers))
    halved = {name for name, _ in result.float16}
    for name, reason in result.skipped:
        stored = ", stored as float16" if name in halved and "float16" not in reason else ""
        typer.echo(f"left dense: {name}: {reason}{stored}")
    typer.echo(f"coverage: {result.coverage:.1%} of {result.float_params:,} float parameters compressed"
               + (f" ({len(result.skipped)} tensor{'s' if len(result.skipped) != 1 else ''} left dense, listed above)" if result.skipped else ""))
    typer.echo(f"total: {result.input_bytes:,} bytes -> {result.output_bytes:,} bytes "
               f"({result.output_path} + {result.sidecar_path or 'no sidecar'}): {result.ratio:.1f}x smaller")
    if result.budget:
        b = result.budget
        typer.echo(f"budget {b['metric']}={b['value']}: "
                   + ("the data-free default output" if b.get("data_free") else f"predicted error {b['predicted_error']:.4g}")
                   + (f", measured {b['measured_error']:.4g} on {b['holdout_samples']} held-back samples"
                      if b.get("measured_error") is not None else
                      f", a distilled rung not measured on the {b['holdout_samples']} held-back samples")
                   + (f", {b['check_error']:.4g} (bound {b['check_bound']:.4g}) on {b['check_samples']} check samples"
                      if b.get("check_error") is not None else ""))
        for name, setting in b["settings"].items():
            typer.echo(f"  {name}: " + (("left dense as float16" if setting.get("float16") else "left dense") if setting.get("skip") else
                                        f"sparsity {setting['sparsity']:.2f}, {setting['bits']} bits"))
    if result.accuracy_before is not None:
        delta = 100 * (result.accuracy_after - result.accuracy_before)
        typer.echo(f"top-1 accuracy: {100 * result.accuracy_before:.2f}% before, {100 * result.accuracy_after:.2f}% after ({delta:+.2f} points)")
    for round_ in result.backoff:
        tightened = round_.get("tightened") or []
        typer.echo(f"back-off: min cosine {round_['min_cosine']:.4f} at model error budget {round_['budget']:.4f}"
                   + (f" with the limits of {', '.join(tightened)} halved" if tightened else "")
                   + f" ({'passed' if round_.get('passed') else 'missed'}), {round_['bytes']:,} bytes")
    if result.fallback and not nothing:
        typer.echo(f"fallback: {result.fallback}")
    _print_fidelity(result.fidelity)


def _print_fidelity(fidelity: dict | None) -> None:
    from onnxcomp.pipeline.fidelity import Fidelity
    if fidelity is None:
        return
    measured = Fidelity(**fidelity)
    typer.echo(measured.line())
    if measured.below:
        typer.echo(f"warning: min cosine {measured.min_cosine:.4f} is below {measured.threshold}: the compressed model's "
                   "outputs differ from the original's; check it on real data (onnxcomp verify) or compress with more "
                   "bits (--bits 8, --recipe conservative)", err=True)


@app.command()
def recipes(as_json: bool = typer.Option(False, "--json", help="Print the recipes as JSON.")) -> None:
    """List the built-in recipes usable with compress --recipe NAME.

    Example: onnxcomp recipes
    """
    from onnxcomp.core.recipes import BUILTIN
    if as_json:
        typer.echo(json.dumps({name: {"description": r.description, "options": r.options} for name, r in BUILTIN.items()}, indent=2))
        return
    for name, recipe in BUILTIN.items():
        typer.echo(f"{name}: {recipe.description}")
        for key, value in recipe.options.items():
            shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
            typer.echo(f"    {key}: {shown}")


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="An original or compressed (custom-op or portable) ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON (schema: docs/report.md)."),
    quiet: bool = QUIET, verbose: bool = VERBOSE, debug: bool = DEBUG,
) -> None:
    """Show what every weight costs: shape, sparsity, bits, codebook size, stored bytes, entropy bound.

    Example: onnxcomp inspect small.onnx --json
    """
    _setup_logging(quiet, verbose)
    from onnxcomp.pipeline.inspection import inspect as run_inspect
    with _user_errors(debug):
        result = run_inspect(str(model))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    elif not quiet:
        _print_inspection(result)


def _print_inspection(result) -> None:
    typer.echo(f"{result.path}: {result.format} model, {result.file_bytes:,} bytes on disk")
    # kind and element count follow from op and shape (both are in --json): left out to fit 80 columns; the
    # outlier columns only when some weight keeps outliers
    columns = [("weight", "left"), ("op", "left"), ("shape", "left"), ("sparsity", "right"), ("bits", "right"),
               ("K", "right"), ("stored", "right"), ("bits/w", "right"), ("entropy", "right")]
    rows = [[w.name, w.op, "x".join(map(str, w.shape)), f"{w.sparsity:.1%}", str(w.bits),
             "-" if w.codebook_size is None else str(w.codebook_size), f"{w.stored_bytes:,}",
             f"{w.bits_per_weight:.2f}", f"{w.entropy_bytes:,}"] for w in result.weights]
    if any(w.outliers for w in result.weights):
        columns += [("outliers", "right"), ("out.bytes", "right")]
        for row, w in zip(rows, result.weights):
            row += [f"{w.outliers:,}", f"{w.outlier_bytes:,}"]
    print_table(columns, rows)
    typer.echo(f"total: {result.params:,} weights, {result.dense_bytes:,} bytes as float32 -> {result.stored_bytes:,} "
               f"stored ({result.ratio:.1f}x)")


@app.command()
def decompress(
    compressed: Path = typer.Argument(..., help="A model written by onnxcomp compress (its sidecar beside it)."),
    output: Path = typer.Argument(..., metavar="OUT", help="The dense model to write (standard ONNX ops only)."),
    quiet: bool = QUIET, verbose: bool = VERBOSE, debug: bool = DEBUG,
) -> None:
    """Write a plain dense ONNX model with the decoded weights; it runs anywhere, no custom ops needed.

    Example: onnxcomp decompress small.onnx dense.onnx
    """
    _setup_logging(quiet, verbose)
    from onnxcomp.pipeline.decompression import decompress as run_decompress
    with _user_errors(debug):
        run_decompress(str(compressed), str(output))
    if not quiet:
        typer.echo(f"wrote {output}: dense weights, standard ONNX ops only")


@app.command()
def verify(
    original: Path = typer.Argument(..., help="The model before compression."),
    compressed: Path = typer.Argument(..., help="The compressed (or decompressed) model."),
    calib: Optional[Path] = typer.Option(None, help="Inputs to compare on: .npz keyed by input name (or a folder). Default: seeded random inputs."),
    samples: Optional[int] = typer.Option(None, min=1, help="Use at most this many samples (random inputs: this many, default 64)."),
    seed: int = typer.Option(0, help="Seed of the random inputs."),
    min_cosine: Optional[float] = typer.Option(None, min=-1.0, max=1.0, help="Exit 3 if any output's cosine similarity is below this."),
    min_top1: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Exit 3 if any class-score output's top-1 agreement is below this."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also put each compressed weight alone into ORIGINAL and report its error on the first output, worst first."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    quiet: bool = QUIET, verbose: bool = VERBOSE, debug: bool = DEBUG,
) -> None:
    """Run both models in onnxruntime and compare every output: max abs error, relative L2, cosine, top-1 agreement.

    Exit codes: 0 all thresholds met, 1 user error, 2 usage error, 3 a threshold missed.

    Example: onnxcomp verify model.onnx small.onnx --calib data.npz --min-cosine 0.99 --min-top1 0.95

    Which layer broke the accuracy: onnxcomp verify model.onnx small.onnx --calib data.npz --per-layer
    """
    _setup_logging(quiet, verbose)
    from onnxcomp.pipeline.verification import verify as run_verify
    with _user_errors(debug):
        result = run_verify(str(original), str(compressed), str(calib) if calib else None, samples=samples, seed=seed,
                            per_layer=per_layer, progress=_progress(quiet or as_json))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    elif not quiet:
        if calib is None:
            typer.echo(f"no --calib data: compared on {result.samples} random inputs (seed {seed}) drawn from the declared shapes")
        else:
            typer.echo(f"compared on {result.samples} samples from {calib}")
        columns = (("output", "left"), ("shape", "left"), ("max abs err", "right"), ("rel L2", "right"),
                   ("cosine", "right"), ("top-1 agree", "right"))
        print_table(columns, ([o.name, "x".join(map(str, o.shape)), f"{o.max_abs_error:.4g}", f"{o.relative_l2_error:.4g}",
                               f"{o.cosine:.6f}", "-" if o.top1_agreement is None else f"{o.top1_agreement:.2%}"]
                              for o in result.outputs))
        if result.layers is not None:
            _print_layers(result)
    problems = result.failures(min_cosine, min_top1)
    for problem in problems:
        typer.echo(f"FAILED: {problem}", err=True)
    if problems:
        raise typer.Exit(3)


def _print_layers(result) -> None:
    whole = next(o for o in result.outputs if o.name == result.per_layer_output)
    typer.echo(f"\nper layer, each compressed alone, on output {result.per_layer_output!r} (worst first):")
    columns = (("weight", "left"), ("shape", "left"), ("bits", "right"), ("K", "right"), ("sparsity", "right"),
               ("max err", "right"), ("rel L2", "right"), ("cosine", "right"), ("top-1", "right"), ("share", "right"))
    print_table(columns, ([layer.name, "x".join(map(str, layer.shape)), str(layer.bits), str(layer.codebook_size),
                           f"{layer.sparsity:.1%}", f"{layer.max_abs_error:.4g}", f"{layer.relative_l2_error:.4g}",
                           f"{layer.cosine:.6f}", "-" if layer.top1_agreement is None else f"{layer.top1_agreement:.2%}",
                           f"{layer.share:.1%}"] for layer in result.layers))
    typer.echo(f"the layers' relative L2 errors add up to {result.layers_error_sum:.4g}; "
               f"all compressed together: {whole.relative_l2_error:.4g}")


def _terminate(signum, frame) -> None:
    """SIGTERM (a pipeline's timeout, ``kill``, a container stopping): exit 143 (128 + the signal's number, the
    shell's convention) through the same unwinding as an error, so staging folders and temporary files are removed
    and nothing is left beside the output."""
    print("onnxcomp: stopped by SIGTERM (staging files removed; no partial output)", file=sys.stderr)
    raise SystemExit(128 + signum)


def run() -> None:
    """Console entry point: usage errors exit 2, user errors 1, SIGTERM 143 (``_terminate``)."""
    if threading.current_thread() is threading.main_thread():  # Python's default SIGTERM skips every finally block
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app(prog_name="onnxcomp")
    except SystemExit as stop:
        from onnxcomp.parallel import abandoned_work
        if abandoned_work():  # stopped (SIGTERM, Ctrl-C, an error) while workers ran: their results are not needed,
            sys.stdout.flush()  # and waiting for them (interpreter exit joins every pool's threads) could take minutes
            sys.stderr.flush()
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        raise


if __name__ == "__main__":
    sys.exit(run())
