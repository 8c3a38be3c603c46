"""Recipes: per-layer rules by name pattern in the passes, recipe files, built-in recipes, precedence, CLI."""

import json

from types import SimpleNamespace

import pytest

import onnxcomp
from onnxcomp.errors import InvalidOptionError
from onnxcomp.core.recipes import BUILTIN, LayerRule, load, resolve, rule_value
from onnxcomp.passes import PruneWeightsPass, ShareWeightsPass
from test_cli import BUNDLED, expect_error, onnxcomp as cli
from test_tools import mixed_model  # noqa: F401 - fixture


def test_rule_matching_last_rule_wins():
    rules = [LayerRule("fc*", bits=4, sparsity=0.2), LayerRule("fc2.*", bits=6), LayerRule("conv?", skip=True)]
    assert rule_value(rules, "fc2.weight", "bits") == 6
    assert rule_value(rules, "fc2.weight", "sparsity") == 0.2
    assert rule_value(rules, "fc1.weight", "bits") == 4
    assert rule_value(rules, "conv1", "skip") and not rule_value(rules, "conv12", "skip")
    assert rule_value(rules, "other", "bits") is None


@pytest.mark.parametrize("fields, words", [({"bits": 0}, "bits 0"), ({"sparsity": 1.0}, "sparsity 1.0"),
                                           ({"score": "random"}, "unknown score")])
def test_invalid_rules(fields, words):
    with pytest.raises(InvalidOptionError, match=words):
        LayerRule("x*", **fields)


def test_passes_take_rules_over_kinds():
    rules = (LayerRule("head.*", bits=7, sparsity=0.1, score="magnitude"),)
    share = ShareWeightsPass(bits={"fc": 3, "conv": 5, "embedding": 6}, rules=rules)
    target = lambda name, kind="fc": SimpleNamespace(name=name, kind=kind, bits_override=None, sparsity_override=None)  # noqa: E731
    assert share.bits_for(target("head.weight")) == 7 and share.bits_for(target("body.weight")) == 3
    assert share.bits_for(target("x", "conv")) == 5
    prune = PruneWeightsPass(method="activation", sparsity={"fc": 0.5}, rules=rules)
    assert prune.sparsity_for(target("head.weight")) == 0.1 and prune.sparsity_for(target("body.weight")) == 0.5
    overridden = SimpleNamespace(name="head.weight", kind="fc", bits_override=2, sparsity_override=0.9)
    assert share.bits_for(overridden) == 2 and prune.sparsity_for(overridden) == 0.9  # a budget allocation wins
    assert prune.score_for("head.weight") == "magnitude" and prune.score_for("body.weight") == "wanda"
    with pytest.raises(InvalidOptionError, match="global pruning"):
        PruneWeightsPass(scope="global", sparsity=0.5, rules=rules)


def test_compress_with_layer_rules(mixed_model, tmp_path):  # noqa: F811
    layers = [{"pattern": "w_*", "bits": 2, "sparsity": 0.25}, {"pattern": "w_conv", "bits": 6, "sparsity": 0.0},
              {"pattern": "table", "skip": True}]
    report = onnxcomp.compress(mixed_model, tmp_path / "out.onnx", bits=4, sparsity=0.5, min_elements=100, layers=layers)
    by_name = {layer.name: layer for layer in report.layers}
    assert set(by_name) == {"w_gemm", "w_matmul", "w_conv"}
    assert ("table", "skipped by the layer rule 'table'") in report.skipped
    assert by_name["w_gemm"].bits == 2 and by_name["w_gemm"].codebook_size <= 4
    assert by_name["w_gemm"].sparsity == pytest.approx(0.25, abs=1e-3)
    assert by_name["w_conv"].bits == 6 and by_name["w_conv"].sparsity == 0.0 and by_name["w_conv"].codebook_size > 16
    inspected = {w.name: w for w in onnxcomp.inspect(tmp_path / "out.onnx").weights}
    assert inspected["table"].storage == "dense" and inspected["w_matmul"].bits == 2


def test_recipe_file_and_precedence(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('description = "mine"\nbase = "deep-compression"\n[options]\nmin-elements = 100\n'
                    'bits = { fc = 4 }\n[[layer]]\npattern = "fc3.*"\nbits = 8\n')
    recipe = load(path)
    assert recipe.description == "mine" and recipe.options["min_elements"] == 100
    assert recipe.options["bits"] == {"conv": 8, "fc": 4, "embedding": 8}  # merged kind by kind over the base
    resolved = resolve("conservative", path, {"bits": {"conv": 3}, "seed": 5})
    assert resolved["bits"] == {"conv": 3, "fc": 4, "embedding": 8} and resolved["seed"] == 5
    assert resolved["sparsity"] == BUILTIN["deep-compression"].options["sparsity"]  # the file's base beats --recipe
    assert [r.pattern for r in resolved["layers"]] == ["fc3.*"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[options]\nbitz = 3\n")
    with pytest.raises(InvalidOptionError, match="bitz"):
        onnxcomp.compress(BUNDLED, tmp_path / "out.onnx", config=bad)
    bad.write_text("[[layer]]\nbits = 3\n")
    with pytest.raises(InvalidOptionError, match="pattern"):
        load(bad)


def test_recipes_cli(tmp_path):
    listing = cli("recipes")
    assert listing.returncode == 0
    for name in ("default", "deep-compression", "conservative"):
        assert f"{name}: " in listing.stdout
    data = json.loads(cli("recipes", "--json").stdout)
    assert data["deep-compression"]["options"]["bits"] == {"conv": 8, "fc": 5, "embedding": 8}

    config = tmp_path / "layers.toml"
    config.write_text('[options]\nmin-elements = 100\n[[layer]]\npattern = "fc3.*"\nbits = 2\n[[layer]]\npattern = "fc2.*"\nskip = true\n')
    report = tmp_path / "r.json"
    result = cli("compress", BUNDLED, tmp_path / "out.onnx", "--recipe", "deep-compression", "--config", config,
                 "--conv-bits", "6", "--report", report, "-q")
    assert result.returncode == 0, result.stderr
    layers = {layer["name"]: layer for layer in json.loads(report.read_text())["layers"]}
    # fc3 (and fc1's 300-element bias, kind other) qualify through min-elements 100, fc2.* skipped
    assert set(layers) == {"fc1.weight", "fc1.bias", "fc3.weight"} and layers["fc1.bias"]["kind"] == "other"
    assert layers["fc1.weight"]["bits"] == 5 and layers["fc3.weight"]["bits"] == 2
    assert layers["fc1.weight"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    explicit = cli("compress", BUNDLED, tmp_path / "out.onnx", "--recipe", "deep-compression", "--fc-bits", "3", "--report", report, "-q")
    assert explicit.returncode == 0 and json.loads(report.read_text())["layers"][0]["bits"] == 3
    expect_error(cli("compress", BUNDLED, tmp_path / "out.onnx", "--recipe", "nope"), "unknown recipe 'nope'", "deep-compression")
    expect_error(cli("compress", BUNDLED, tmp_path / "out.onnx", "--config", tmp_path / "none.toml"), "no such recipe file")
