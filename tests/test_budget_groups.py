"""Calibration groups: a budget's held-back and check samples drawn by whole groups (autotune.budget_split)."""

import numpy as np
import pytest

import onnxcomp
from onnxcomp.core.budget import error
from onnxcomp.errors import CalibrationError
from onnxcomp.pipeline.autotune import budget_split, compress_to_budget

from conftest import budget_mlp, run_plain


@pytest.mark.parametrize("seed", range(20))
def test_groups_are_never_split_between_fit_held_back_and_check(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, int(rng.integers(3, 12)))
    groups = rng.permutation(np.repeat(np.arange(len(sizes)) * 7 + 3, sizes))  # ids need not be 0..k-1, nor sorted
    count = len(groups)
    held, checked = max(1, round(0.25 * count)), round(0.25 * count)
    fit, hold, check = budget_split(count, held, checked, seed, groups)
    assert sorted(np.concatenate([fit, hold, check]).tolist()) == list(range(count))
    assert len(fit) and len(hold) and len(check)
    parts = [set(groups[part].tolist()) for part in (fit, hold, check)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    for part in (fit, hold, check):
        assert np.all(np.diff(part) > 0)  # file order
        # each part holds every sample of each of its groups
        assert sorted(part.tolist()) == sorted(np.flatnonzero(np.isin(groups, groups[part])).tolist())
    # within its target unless its first group alone is larger
    assert len(check) <= checked or len(parts[2]) == 1
    assert len(hold) <= held or len(parts[1]) == 1
    again = budget_split(count, held, checked, seed, groups)
    assert all(np.array_equal(a, b) for a, b in zip(again, (fit, hold, check)))


def test_string_group_ids_fill_each_part_up_to_its_share():
    groups = np.array([f"photo{i % 9}" for i in range(36)])  # the zoo's ddddocr-det: 9 photographs, 4 captchas each
    fit, hold, check = budget_split(36, 9, 9, 0, groups)
    assert len(check) == len(hold) == 8 and len(fit) == 20  # 2 photographs each: a third would pass 9
    assert len(set(groups[check])) == len(set(groups[hold])) == 2
    others = [budget_split(36, 9, 9, seed, groups)[2].tolist() for seed in range(1, 8)]
    assert any(o != check.tolist() for o in others)  # the seed picks which photographs


def test_too_few_groups_are_refused_in_one_line():
    with pytest.raises(CalibrationError, match="2 calibration groups are too few .* at least 3 groups") as caught:
        budget_split(10, 3, 3, 0, np.array([0] * 5 + [1] * 5))
    assert "\n" not in str(caught.value)
    fit, hold, check = budget_split(10, 3, 0, 0, np.array([0] * 5 + [1] * 5))  # --check 0: two groups suffice
    assert len(check) == 0 and len(fit) == len(hold) == 5


def test_budget_check_set_is_made_of_whole_groups(tmp_path, rng):
    """End to end: with a `groups` array the check set is the groups budget_split draws, and the written model meets
    the budget on exactly those samples (measured here in onnxruntime)."""
    model, data = budget_mlp(tmp_path, rng)
    x = np.load(data)["x"]
    groups = np.arange(80) // 8  # 10 sources of 8 samples, stored in order
    np.savez(tmp_path / "grouped.npz", x=x, groups=groups)
    report = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="rel_l2=0.2",
                                calib=str(tmp_path / "grouped.npz"), sparsities=(0.0, 0.5, 0.8), bits=(2, 4, 8),
                                min_elements=16, cache_dir=str(tmp_path / "cache"))
    fit, hold, check = budget_split(80, 20, 20, 0, groups)
    b = report.budget
    assert b["check_samples"] == len(check) == 16 and b["holdout_samples"] == len(hold) == 16
    assert not set(groups[check]) & set(groups[fit]) and not set(groups[hold]) & set(groups[fit])
    want = run_plain(model, {"x": x[check]})[0]
    got = onnxcomp.InferenceSession(tmp_path / "out.onnx").run(None, {"x": x[check]})[0]
    assert error("rel_l2", want, got) == pytest.approx(b["check_error"], rel=1e-5)
    # the groups decide the split, so a file without them gets curves of its own
    plain = compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "plain.onnx"), budget="rel_l2=0.2",
                               calib=str(data), sparsities=(0.0, 0.5, 0.8), bits=(2, 4, 8), min_elements=16,
                               cache_dir=str(tmp_path / "cache"))
    assert plain.budget["cache"] != b["cache"] and plain.budget["check_samples"] == 20


@pytest.mark.parametrize("groups, words", [
    (np.arange(79), r"'groups' has shape \[79\]: give one group id per sample, shape \[80\]"),
    (np.zeros((80, 1), np.int64), r"'groups' has shape \[80, 1\]"),
    (np.linspace(0, 1, 80), "'groups' is float64: give integer or string group ids"),
])
def test_malformed_groups_are_refused_in_one_line(tmp_path, rng, groups, words):
    _, data = budget_mlp(tmp_path, rng)
    np.savez(tmp_path / "bad.npz", x=np.load(data)["x"], groups=groups)
    with pytest.raises(CalibrationError, match=words) as caught:
        compress_to_budget(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), budget="cosine=0.95",
                           calib=str(tmp_path / "bad.npz"), min_elements=16, cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(caught.value)


def test_groups_are_no_input_for_plain_calibration_and_fidelity(tmp_path, rng):
    """compress --calib without a budget, and its fidelity line, read a grouped file as if it had no groups."""
    _, data = budget_mlp(tmp_path, rng)
    np.savez(tmp_path / "grouped.npz", x=np.load(data)["x"], groups=np.arange(80) // 8)
    kwargs = dict(min_elements=16, prune="activation")
    grouped = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "a.onnx", calib=str(tmp_path / "grouped.npz"), **kwargs)
    plain = onnxcomp.compress(tmp_path / "in.onnx", tmp_path / "b.onnx", calib=str(data), **kwargs)
    assert (tmp_path / "a.onnxcomp").read_bytes() == (tmp_path / "b.onnxcomp").read_bytes()
    assert grouped.fidelity == plain.fidelity
