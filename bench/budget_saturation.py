"""What the sensitivity analysis's saturation rule (autotune.SATURATION) saves and costs, on cached curves.

Reads sensitivity caches written by ``compress --budget`` (JSON in ``--cache-dir``, default ~/.cache/onnxcomp:
each weight's [(sparsity, bits, bytes, error)] with the dense candidate last), measured without the rule (cache
version 8 and before), and replays the rule on them in the order the analysis tries them (sparsities in order,
bit widths from the lowest): at a sparsity above 0, once a bit width's error is more than SATURATION x the
previous width's, the higher widths are dropped. Prints the trials kept and, for each allowed error, the bytes of
the allocation (budget.allocate) from the reduced curves over the bytes from the full ones (1.0000: the same
allocation size).
Usage:
    python bench/budget_saturation.py CACHE.json [CACHE.json ...] [--saturation 0.7] [--allowed 0.0025,0.005,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxcomp.core import budget as budget_math  # noqa: E402
from onnxcomp.pipeline.autotune import SATURATION  # noqa: E402


def saturated(points: list, saturation: float) -> tuple[list, int]:
    """(the curve without the trials the rule skips, how many it skips)."""
    kept, skipped, previous = [], 0, {}
    stopped = set()
    for point in points[:-1]:
        sparsity, _, _, error = point
        if sparsity in stopped:
            skipped += 1
            continue
        kept.append(point)
        if sparsity > 0 and sparsity in previous and error > saturation * previous[sparsity]:
            stopped.add(sparsity)
        previous[sparsity] = error
    return kept + [points[-1]], skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="+")
    parser.add_argument("--saturation", type=float, default=SATURATION)
    parser.add_argument("--allowed", default="0.0025,0.005,0.0075,0.01,0.015,0.02,0.03")
    args = parser.parse_args()
    allowed = [float(a) for a in args.allowed.split(",")]
    for path in args.caches:
        with open(path) as f:
            curves = {name: [tuple(p) for p in points] for name, points in json.load(f).items()}
        reduced, skipped = {}, 0
        for name, points in curves.items():
            reduced[name], count = saturated(points, args.saturation)
            skipped += count
        trials = sum(len(points) - 1 for points in curves.values())
        ratios = []
        for error in allowed:
            sizes = []
            for chosen in (curves, reduced):
                picks = budget_math.allocate({n: [(p[2], p[3]) for p in ps] for n, ps in chosen.items()}, error)
                sizes.append(None if picks is None else sum(chosen[n][i][2] for n, i in picks.items()))
            ratios.append("-" if None in sizes else f"{sizes[1] / sizes[0]:.4f}")
        print(f"{Path(path).name}: {len(curves)} weights, {trials - skipped} of {trials} trials kept "
              f"({skipped / trials:.0%} skipped); allocation bytes reduced/full at allowed "
              + ", ".join(f"{e:g}: {r}" for e, r in zip(allowed, ratios)))


if __name__ == "__main__":
    main()
