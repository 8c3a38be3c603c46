"""``compress --html``: a self-contained HTML page (plots embedded as base64 PNG) about one compression.

Per layer: bars of sparsity, index bits and bytes before/after, and a histogram of the original weights
with the codebook centroids marked (the pruned value 0 in another colour). Needs matplotlib, which is the
optional extra ``onnxcomp[report]``.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.passes import model_io
from onnxcomp.errors import OnnxcompError
from onnxcomp.pipeline.inspection import stored_weights

MAX_HISTOGRAMS = 24  # beyond this many layers the page shows the largest ones


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise OnnxcompError("--html needs matplotlib: pip install 'onnxcomp[report]' (or pip install matplotlib)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _layer_bars(plt, layers) -> str:
    names = [layer.name for layer in layers]
    y = np.arange(len(names))
    height = 0.6 + 0.35 * len(names)
    figure, axes = plt.subplots(1, 3, figsize=(13, height), sharey=True)
    axes[0].barh(y, [100 * layer.sparsity for layer in layers], color="#c0504d")
    axes[0].set_xlabel("sparsity (% pruned)")
    axes[0].set_xlim(0, 100)
    axes[1].barh(y, [layer.bits for layer in layers], color="#4f81bd")
    axes[1].set_xlabel("index bits")
    axes[2].barh(y - 0.2, [layer.bytes_before for layer in layers], 0.4, label="before (float32)", color="#9bbb59")
    axes[2].barh(y + 0.2, [layer.bytes_after for layer in layers], 0.4, label="after (stored)", color="#8064a2")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("bytes (log scale)")
    axes[2].set_title("bytes: green before (float32), purple after (stored)", fontsize=8)  # a legend would cover bars
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def _histogram(plt, name: str, values: np.ndarray, codebook: np.ndarray) -> str:
    figure, axis = plt.subplots(figsize=(6, 2.6))
    axis.hist(values.ravel(), bins=120, color="#7f7f7f", log=True)
    for centroid in codebook:
        axis.axvline(float(centroid), color="#c0504d" if centroid == 0 else "#1f77b4", linewidth=0.9)
    axis.set_title(f"{name}: {values.size:,} weights, {len(codebook)} shared values", fontsize=9)
    axis.set_xlabel("weight value (blue lines: codebook centroids; red: pruned 0)", fontsize=8)
    axis.tick_params(labelsize=7)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def render(report) -> str:
    """The HTML page for a ``pipeline.Report`` (reads the input model and the written output)."""
    plt = _pyplot()
    layers = report.layers
    original = model_io.load_model(report.input_path)
    weights = {t.name: t for t in original.graph.initializer}
    compressed = onnx.load(report.output_path, load_external_data=False)
    codebooks = {w.name: w.codebook for w in stored_weights(compressed, report.output_path).values()}
    parts = [f"<h1>onnxcomp report</h1><p><code>{html.escape(report.input_path)}</code> &rarr; "
             f"<code>{html.escape(report.output_path)}</code>: {report.input_bytes:,} &rarr; {report.output_bytes:,} bytes, "
             f"<b>{report.ratio:.1f}x</b> smaller.</p>"]
    if report.accuracy_before is not None:
        parts.append(f"<p>top-1 accuracy {100 * report.accuracy_before:.2f}% before, {100 * report.accuracy_after:.2f}% after.</p>")
    rows = "".join(f"<tr><td>{html.escape(layer.name)}</td><td>{layer.kind}</td><td>{'x'.join(map(str, layer.shape))}</td>"
                   f"<td>{100 * layer.sparsity:.1f}%</td><td>{layer.bits}</td><td>{layer.codebook_size}</td>"
                   f"<td>{layer.bytes_before:,}</td><td>{layer.bytes_after:,}</td><td>{layer.ratio:.1f}x</td></tr>" for layer in layers)
    parts.append("<table><tr><th>weight</th><th>kind</th><th>shape</th><th>sparsity</th><th>bits</th><th>K</th>"
                 f"<th>bytes before</th><th>bytes after</th><th>ratio</th></tr>{rows}</table>")
    if report.skipped:
        items = "".join(f"<li>{html.escape(name)}: {html.escape(reason)}</li>" for name, reason in report.skipped)
        parts.append(f"<p>Left dense:</p><ul>{items}</ul>")
    if layers:
        parts.append(f'<h2>Per layer</h2><img alt="per-layer sparsity, bits and bytes" src="data:image/png;base64,{_layer_bars(plt, layers)}">')
        parts.append("<h2>Weights and codebooks</h2>")
        for layer in sorted(layers, key=lambda l: -l.params)[:MAX_HISTOGRAMS]:
            if layer.name in weights and layer.name in codebooks:
                values = numpy_helper.to_array(weights[layer.name])
                parts.append(f'<img alt="histogram of {html.escape(layer.name)}" '
                             f'src="data:image/png;base64,{_histogram(plt, layer.name, values, codebooks[layer.name])}">')
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>onnxcomp report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def write_html(report, path: str | os.PathLike) -> None:
    """Write the page for ``report`` to ``path``."""
    page = render(report)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as error:
        from onnxcomp.errors import OutputError
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
