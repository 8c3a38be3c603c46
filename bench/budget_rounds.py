"""Where a calibrated run's search stopped, read from its report (issue #12, branch cal11b).

For each `--report` JSON of `onnxcomp compress --budget` given: the budget, the sizes of its three parts (fit /
held back / check), every trial of the search (`budget.rounds`: allowed and predicted error, error and bound measured
on the held-back samples, trial bytes, what steered it) and the check set's sequence (`budget.checks`), then which
constraint bound: the check set (its last test missed), or the held-back samples (every allocation the check set
tested passed; the smaller trials missed on the held-back samples).

With the run's sensitivity curves (the report's `budget.cache`, still in the cache folder) and an allocation metric
whose errors add as squares (onnxcomp.core.budget.QUADRATURE: rel_l2), each trial's allocation is recomputed from
the curves as the run allocated it (by the summed errors before branch cal11b, by their squares since: a run whose
checks record `held_back`), and printed with its predicted error both summed and as the root sum of squares, next
to what the trial measured; and the allocation the curves give at the same root-sum-of-squares error, with its
bytes (the curves' bytes: the compressed weights' records only).

Usage:
    python bench/budget_rounds.py REPORT.json [REPORT.json ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from onnxcomp.core import budget as budget_math


def _curves(path: str | None) -> dict | None:
    try:
        return {n: [tuple(p) for p in points] for n, points in json.loads(Path(path).read_text()).items()}
    except (OSError, TypeError, ValueError):
        return None


def main(paths: list[str]) -> None:
    for path in paths:
        report = json.loads(Path(path).read_text())
        b = report.get("budget") or {}
        rounds, checks = b.get("rounds", []), b.get("checks", [])
        print(f"\n{path}: {report['input_bytes']:,} bytes in, ratio {report.get('ratio', 0):.2f}x; budget "
              f"{b.get('metric')}={b.get('value')} (curves: {b.get('allocation_metric')}); "
              f"{b.get('holdout_samples')} held back, {b.get('check_samples')} check samples")
        print("| trial | steered by | allowed | predicted | held-back error | bound | trial bytes |")
        print("|---|---|---|---|---|---|---|")
        for i, r in enumerate(rounds, 1):
            print(f"| {i} | {r['steered_by']} | {r['allowed']:.4g} | {r['predicted']:.4g} | {r['measured']:.4g} | "
                  f"{r['bound']:.4g} | {r['bytes']:,} |")
        print("| check | written bytes | check-set error | bound |")
        print("|---|---|---|---|")
        for i, c in enumerate(checks, 1):
            print(f"| {i} | {c['bytes']:,} | {c['measured']:.4g} | {c['bound']:.4g} |")
        limit = budget_math.parse_budget(f"{b.get('metric')}={b.get('value')}").max_error if b else None
        if checks and limit is not None:
            last = checks[-1]
            bound = ("the check set: the last allocation tested missed" if last["bound"] > limit + 1e-12 else
                     "the held-back samples: every allocation the check set tested passed")
            print(f"what bound: {bound}")
        metric = b.get("allocation_metric")
        curves = _curves(b.get("cache"))
        between = _curves(b.get("cache_between")) or {}  # codebook sizes between bit widths (branch calk11), as allocated
        if curves is not None and between:
            from onnxcomp.pipeline.autotune import no_better_than_between
            curves = {n: no_better_than_between(c[:-1] + between[n] + c[-1:]) if n in between else c for n, c in curves.items()}
        if curves is None or metric not in budget_math.QUADRATURE:
            continue
        points = {n: [(c[2], c[3]) for c in cands] for n, cands in curves.items()}
        squares = {n: [(c[2], c[3] ** 2) for c in cands] for n, cands in curves.items()}
        print("| allowed | summed prediction | root sum of squares | measured | curve bytes | curve bytes of the "
              "allocation at that root sum of squares |")
        print("|---|---|---|---|---|---|")
        # a run since branch cal11b (its checks record the held-back error) allocated by the squares
        squared = any("held_back" in c for c in checks)
        for r in rounds:
            choice = (budget_math.allocate(squares, r["allowed"] ** 2) if squared
                      else budget_math.allocate(points, r["allowed"]))
            if choice is None:
                continue
            errors = [curves[n][i][3] for n, i in choice.items()]
            rss = math.sqrt(sum(e * e for e in errors))
            size = sum(curves[n][i][2] for n, i in choice.items())
            square = budget_math.allocate(squares, rss * rss)
            other = sum(curves[n][i][2] for n, i in square.items())
            print(f"| {r['allowed']:.4g} | {sum(errors):.4f} | {rss:.4f} | {r['measured']:.4f} | {size:,} | "
                  f"{other:,} ({size / other:.3f}x fewer) |")


if __name__ == "__main__":
    main(sys.argv[1:])
