"""compress --report (JSON schema of docs/report.md) and --html (self-contained page with embedded plots)."""

import base64
import re
import sys

import pytest

import onnxcomp
from test_cli import BUNDLED, BUNDLED_EVAL, onnxcomp as cli

REPORT_KEYS = {"input_path", "output_path", "sidecar_path", "input_bytes", "output_bytes", "layers", "skipped",
               "accuracy_before", "accuracy_after", "ratio", "budget", "fidelity", "allocation", "backoff", "fallback",
               "float_params", "compressed_params", "coverage", "float16", "names"}
LAYER_KEYS = {"name", "kind", "shape", "params", "sparsity", "codebook_size", "bits", "bytes_before", "bytes_after", "ratio",
              "outliers"}


def test_report_json_matches_the_documented_schema(tmp_path):
    report = onnxcomp.compress(BUNDLED, tmp_path / "out.onnx", eval_data=str(BUNDLED_EVAL)).to_dict()
    assert set(report) == REPORT_KEYS
    assert all(set(layer) == LAYER_KEYS for layer in report["layers"])
    assert report["skipped"] == [["fc3.weight", "1000 elements, below --min-elements 1024"]] or \
        report["skipped"] == [("fc3.weight", "1000 elements, below --min-elements 1024")]
    documented = (BUNDLED.parents[1] / "docs" / "report.md").read_text()
    for key in REPORT_KEYS | LAYER_KEYS:
        assert f"`{key}`" in documented, key


def test_html_report(tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    result = cli("compress", BUNDLED, tmp_path / "out.onnx", "--html", page, "-q")
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 1 + 2  # per-layer bars, then one histogram per compressed layer (fc1, fc2)
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert "http://" not in text and "https://" not in text  # self-contained
    assert "fc1.weight" in text and "fc3.weight: 1000 elements" in text and "smaller" in text


def test_html_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    from onnxcomp.errors import OnnxcompError
    from onnxcomp.front.html_report import write_html
    report = onnxcomp.compress(BUNDLED, tmp_path / "out.onnx")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OnnxcompError, match=r"onnxcomp\[report\]"):
        write_html(report, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
