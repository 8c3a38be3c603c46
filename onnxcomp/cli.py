"""The ``onnxcomp`` command line: a thin typer front over ``onnxcomp.pipeline``."""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .errors import OnnxcompError, OutputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Deep Compression for ONNX models.")


class PruneMethod(str, Enum):
    magnitude = "magnitude"
    activation = "activation"
    none = "none"


class Score(str, Enum):
    wanda = "wanda"
    tfidf = "tfidf"


class Threshold(str, Enum):
    percentile = "percentile"
    sensitivity = "sensitivity"


class Scope(str, Enum):
    layer = "layer"
    global_ = "global"


class Init(str, Enum):
    quantile = "quantile"
    linear = "linear"


@app.callback()
def main() -> None:
    """Compress ONNX models: prune, share weights through k-means codebooks, Huffman-code the indices."""


def _bits_option(value: Optional[int], kind: str) -> None:
    if value is not None and not 1 <= value <= 16:
        raise typer.BadParameter(f"{value} is out of range: give an integer from 1 to 16", param_hint=f"--{kind}")


@app.command()
def compress(
    input_path: Path = typer.Argument(..., metavar="IN", help="The ONNX model to compress (never modified)."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="The compressed model; its sidecar OUT-stem.onnxcomp goes beside it."),
    prune: PruneMethod = typer.Option(PruneMethod.magnitude, help="Pruning: by |w|, by activation-aware --score (needs --calib), or none."),
    score: Score = typer.Option(Score.wanda, help="Activation-aware score: wanda |w|*||x||, or tfidf (docs/guide.md)."),
    sparsity: Optional[float] = typer.Option(None, min=0.0, max=0.999, help="Fraction of weights pruned in every layer (default: per kind, see docs/guide.md)."),
    threshold: Threshold = typer.Option(Threshold.percentile, help="percentile: prune the --sparsity fraction; sensitivity: prune scores below --sensitivity x std."),
    sensitivity: float = typer.Option(1.0, min=0.0, help="Multiplier of the score std for --threshold sensitivity."),
    scope: Scope = typer.Option(Scope.layer, help="Prune each layer by itself, or all layers against one threshold."),
    calib: Optional[str] = typer.Option(None, help="Calibration inputs: .npz keyed by input name (or a folder of them); 'random' for smoke tests only."),
    calib_samples: Optional[int] = typer.Option(None, min=1, help="Use at most this many calibration samples."),
    calib_batch: int = typer.Option(64, min=1, help="Calibration batch size."),
    activation_threshold: float = typer.Option(0.0, help="An input 'fires' above this value (tfidf statistics)."),
    reconstruct: Optional[bool] = typer.Option(None, "--reconstruct/--no-reconstruct", help="Least-squares refit of kept weights and codebooks (default: on with --calib)."),
    ridge: float = typer.Option(1e-2, min=0.0, help="Ridge regularisation of the refit, relative to the mean input energy."),
    budget: Optional[str] = typer.Option(None, help="Smallest model within a quality budget, e.g. top1=0.99, cosine=0.99, rel_l2=0.05, accuracy=0.01 (needs --calib)."),
    holdout: float = typer.Option(0.25, min=0.01, max=0.99, help="With --budget: fraction of calibration samples held back to measure quality."),
    cache_dir: Optional[Path] = typer.Option(None, help="With --budget: where sensitivity curves are cached (default ~/.cache/onnxcomp)."),
    tfidf_power: float = typer.Option(1.0, help="tfidf: power p on |w|."),
    tfidf_smoothing: float = typer.Option(1.0, min=0.0, help="tfidf: smoothing added to firing counts."),
    tfidf_constant: float = typer.Option(1.0, help="tfidf: constant added to the IDF."),
    tfidf_exponent: float = typer.Option(1.0, help="tfidf: exponent on TF x IDF."),
    bits: Optional[int] = typer.Option(None, help="Codebook bits for every layer, 1-16 (default: per kind)."),
    fc_bits: Optional[int] = typer.Option(None, help="Codebook bits for fully connected (Gemm/MatMul) weights."),
    conv_bits: Optional[int] = typer.Option(None, help="Codebook bits for Conv/ConvTranspose weights."),
    embedding_bits: Optional[int] = typer.Option(None, help="Codebook bits for Gather tables (embeddings)."),
    init: Init = typer.Option(Init.quantile, help="Codebook initialisation before k-means."),
    min_elements: int = typer.Option(1024, min=1, help="Leave weights with fewer elements dense."),
    seed: int = typer.Option(0, help="Seed for every random choice (k-means sampling)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help=".npz with model inputs and 'labels': print top-1 accuracy before and after."),
    report: Optional[Path] = typer.Option(None, help="Write the per-layer report as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each decision (skipped tensors and why)."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Compress IN into OUT plus a sidecar file.

    Example: onnxcomp compress model.onnx small.onnx --sparsity 0.6 --bits 4 --eval data.npz
    """
    for value, kind in ((bits, "bits"), (fc_bits, "fc-bits"), (conv_bits, "conv-bits"), (embedding_bits, "embedding-bits")):
        _bits_option(value, kind)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    from .pipeline import DEFAULT_BITS, compress as run
    from .pruning import TfidfParameters
    per_kind = dict(DEFAULT_BITS) if bits is None else {kind: bits for kind in DEFAULT_BITS}
    for kind, value in (("fc", fc_bits), ("conv", conv_bits), ("embedding", embedding_bits)):
        if value is not None:
            per_kind[kind] = value
    try:
        if budget:
            from .autotune import compress_to_budget
            result = compress_to_budget(str(input_path), str(output_path), budget=budget, calib=calib, calib_samples=calib_samples,
                                        holdout=holdout, cache_dir=str(cache_dir) if cache_dir else None, prune=prune.value,
                                        score=score.value, reconstruct=reconstruct is not False, ridge=ridge, init=init.value,
                                        seed=seed, min_elements=min_elements, eval_data=str(eval_data) if eval_data else None)
        else:
            result = run(str(input_path), str(output_path), prune=prune.value, score=score.value, sparsity=sparsity,
                         threshold=threshold.value, sensitivity=sensitivity, scope=scope.value, bits=per_kind,
                         init=init.value, min_elements=min_elements, seed=seed, calib=calib, calib_samples=calib_samples,
                         calib_batch=calib_batch, activation_threshold=activation_threshold, reconstruct=reconstruct,
                         ridge=ridge, tfidf=TfidfParameters(tfidf_power, tfidf_smoothing, tfidf_constant, tfidf_exponent),
                         eval_data=str(eval_data) if eval_data else None)
        if report:
            try:
                report.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            except OSError as error:
                raise OutputError(f"cannot write the report {report}: {error.strerror or error} "
                                  f"(the compressed model was written)") from error
    except OnnxcompError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    except Exception as error:  # a bug, not the user's fault: still one line, with a way to get the details
        if debug:
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        typer.echo(f"error: internal error ({type(error).__name__}: {first_line}); "
                   "rerun with --debug and report the traceback", err=True)
        raise typer.Exit(1)
    if not quiet:
        _print_summary(result)


def _print_summary(result) -> None:
    if not result.layers:
        typer.echo(f"nothing to compress in {result.input_path}: no float32 weight qualifies; {result.output_path} is a copy")
    else:
        typer.echo(f"{'weight':<28} {'kind':<9} {'shape':<14} {'sparsity':>8} {'K':>5} {'before':>11} {'after':>10} {'ratio':>7}")
        for layer in result.layers:
            shape = "x".join(map(str, layer.shape))
            typer.echo(f"{layer.name[:28]:<28} {layer.kind:<9} {shape:<14} {layer.sparsity:>8.1%} {layer.codebook_size:>5} "
                       f"{layer.bytes_before:>11,} {layer.bytes_after:>10,} {layer.ratio:>6.1f}x")
    for name, reason in result.skipped:
        typer.echo(f"left dense: {name}: {reason}")
    typer.echo(f"total: {result.input_bytes:,} bytes -> {result.output_bytes:,} bytes "
               f"({result.output_path} + {result.sidecar_path or 'no sidecar'}): {result.ratio:.1f}x smaller")
    if result.budget:
        b = result.budget
        typer.echo(f"budget {b['metric']}={b['value']}: predicted error {b['predicted_error']:.4g}, measured {b['measured_error']:.4g} "
                   f"on {b['holdout_samples']} held-back samples")
        for name, setting in b["settings"].items():
            typer.echo(f"  {name}: sparsity {setting['sparsity']:.2f}, {setting['bits']} bits")
    if result.accuracy_before is not None:
        delta = 100 * (result.accuracy_after - result.accuracy_before)
        typer.echo(f"top-1 accuracy: {100 * result.accuracy_before:.2f}% before, {100 * result.accuracy_after:.2f}% after ({delta:+.2f} points)")


def run() -> None:
    """Console entry point: usage errors exit 2, user errors 1."""
    app(prog_name="onnxcomp")


if __name__ == "__main__":
    sys.exit(run())
