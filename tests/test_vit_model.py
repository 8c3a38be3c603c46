"""The bundled vision transformer (models/vit_fashion.onnx): compresses with the default options, runs through
onnxcomp.InferenceSession, and matches the original graph run with the numpy-decoded weights."""

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcomp

from conftest import reference_model, run_compressed, run_plain

MODELS = Path(__file__).resolve().parents[1] / "models"
VIT = MODELS / "vit_fashion.onnx"


@pytest.mark.skipif(not VIT.exists(), reason="models/vit_fashion.onnx is not there")
def test_vit_compresses_and_matches_the_decoded_reference(tmp_path):
    out = tmp_path / "vit_small.onnx"
    report = onnxcomp.compress(VIT, out)
    assert report.modified
    assert report.output_bytes < report.input_bytes / 4
    onnx.checker.check_model(str(out), full_check=True)
    # with the default --min-elements every MatMul weight of the encoder layers is compressed (4096+ elements)
    names = {layer.name for layer in report.layers}
    assert {f"blocks.0.{w}.weight" for w in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")} <= names

    data = np.load(MODELS / "fashion_eval.npz")
    feeds = {"input": data["input"][:64]}
    got = run_compressed(out, feeds)[0]
    want = run_plain(reference_model(onnx.load(VIT), report.sidecar_path, report.float16), feeds)[0]
    assert got.shape == (64, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
