"""Codebook sizes between bit widths in a calibrated run (branch calk11): what the search picked, and what such sizes
could save at most.

    python bench/between_sizes.py REPORT.json [ALLOWED ...]

For the run's report (`compress --budget ... --report`, or the zoo's `runs/RUN/MODEL.report.json`) and its cached
curves (`budget.cache`, and `budget.cache_between` when the run had ONNXCOMP_BETWEEN_SIZES=1):

1. each trial's allocation recomputed from the curves as the run allocated them (in-between points bounded by
   autotune.no_better_than_between; without the float16 candidates of the weights left dense, so indicative only),
   and the in-between sizes it took;
2. the allocation's curve bytes at the trials' allowed errors (or the ALLOWED given) with the 2^b points only, and
   with, for every weight and every sparsity, a point at K = autotune.between_size between each two bit widths tried
   there, on the straight line in (rate, log error) between its neighbours, its bytes linear in the rate between
   theirs: the most the allocation could credit such sizes with, on every weight, not only the largest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from onnxcomp.core import budget as budget_math
from onnxcomp.pipeline import autotune


def on_the_line(points: list) -> list:
    """``points`` (a curve, the dense candidate last) with an in-between point on the line at each sparsity."""
    extra = []
    for sparsity in sorted({p[0] for p in points if p[0] is not None}):
        side = sorted((p for p in points if p[0] == sparsity and len(p) <= 4), key=lambda p: p[1])
        for low, high in zip(side, side[1:]):
            size = autotune.between_size(low[1], high[1])
            t = (np.log2(size) - low[1]) / (high[1] - low[1])
            error = low[3] ** (1 - t) * high[3] ** t if low[3] > 0 and high[3] > 0 else 0.0
            extra.append((sparsity, autotune.index_bits(size), int(low[2] + t * (high[2] - low[2])), max(error, high[3]), size))
    return points[:-1] + extra + points[-1:]


def curve_bytes(curves: dict, adds: str | None, allowed: float) -> tuple[int, dict] | None:
    choice = budget_math.allocate({n: [(c[2], budget_math.additive(adds, c[3])) for c in cands] for n, cands in curves.items()},
                                  budget_math.additive(adds, allowed))
    return None if choice is None else (sum(curves[n][i][2] for n, i in choice.items()), choice)


def main(path: str, allowed: list[float]) -> None:
    budget = json.loads(Path(path).read_text())["budget"]
    base = autotune._load_cache(budget["cache"])
    between = autotune._load_cache(budget["cache_between"]) if budget.get("cache_between") else {}
    run = {n: autotune.no_better_than_between(c[:-1] + between[n] + c[-1:]) if between.get(n) else c for n, c in base.items()}
    adds = budget["allocation_metric"] if autotune.QUADRATURE else None
    print(f"{path}: {budget['metric']}={budget['value']} (curves: {budget['allocation_metric']})")
    if between:
        print("| trial | steered by | allowed | held-back error | trial bytes | in-between sizes taken |\n|---|---|---|---|---|---|")
        for i, h in enumerate(budget["rounds"], 1):
            found = curve_bytes(run, adds, h["allowed"])
            taken = {} if found is None else {n: run[n][k][4] for n, k in found[1].items() if len(run[n][k]) > 4}
            print(f"| {i} | {h['steered_by']} | {h['allowed']:.4g} | {h['measured']:.4g} | {h['bytes']:,} | "
                  f"{', '.join(f'{n}: {k}' for n, k in taken.items()) or '-'} |")
    lined = {n: on_the_line(c) for n, c in base.items()}
    print("| allowed | curve bytes, 2^b only | every weight with in-between points on the line |\n|---|---|---|")
    for value in allowed or sorted({h["allowed"] for h in budget["rounds"]}):
        plain, best = curve_bytes(base, adds, value), curve_bytes(lined, adds, value)
        if plain is not None and best is not None:
            print(f"| {value:.4g} | {plain[0]:,} | {best[0]:,} ({best[0] / plain[0]:.3f}x) |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], [float(a) for a in sys.argv[2:]])
