"""Why a weight's proxy anchors spread (autotune._Proxy): from a calibrated run's compress log (-v), each weight's
measured trials (eps, model error m), the spread of m / eps^p at the proxy's power p, the power fit to them by least
squares in log-log (m = a eps^q) and the spread left at that power, and the spread without the single anchor that
removes most (one outlier?).
usage: python bench/anchor_powers.py LOG [--power 1.0] [--first N]  (--first: only each weight's first N anchors)"""
import argparse
import re

import numpy as np

LINE = re.compile(r"DEBUG: (\S+) at sparsity ([0-9.e-]+), (\d+) bits: eps ([0-9.e+-]+), measured ([0-9.e+-]+)")
parser = argparse.ArgumentParser()
parser.add_argument("log")
parser.add_argument("--power", type=float, default=1.0)
parser.add_argument("--first", type=int, default=0)
args = parser.parse_args()
anchors = {}
for line in open(args.log):
    match = LINE.search(line)
    if match:
        name, sparsity, bits, eps, error = match.groups()
        if float(eps) > 0 and float(error) > 1e-6:
            anchors.setdefault(name, []).append((float(sparsity), int(bits), float(eps), float(error)))


def spread(values):
    return max(values) / min(values) if len(values) else float("nan")


print(f"{'weight':40s} {'n':>3s} {'spread at p':>11s} {'fit q':>6s} {'spread at q':>11s} {'less 1':>7s}  anchors (sparsity/bits: eps, m, m/eps^p)")
for name, points in anchors.items():
    points = points[:args.first] if args.first else points
    eps = np.array([p[2] for p in points])
    error = np.array([p[3] for p in points])
    ratios = error / eps ** args.power
    q, _ = np.polyfit(np.log(eps), np.log(error), 1) if len(points) >= 2 and np.ptp(np.log(eps)) > 0 else (float("nan"), 0)
    at_q = error / eps ** q if np.isfinite(q) else ratios
    drop_one = min((spread(np.delete(ratios, i)) for i in range(len(ratios))), default=float("nan")) if len(ratios) > 2 else float("nan")
    listing = " ".join(f"{p[0]:g}/{p[1]}: {p[2]:.2e}, {p[3]:.2e}, {r:.3g};" for p, r in zip(points, ratios))
    print(f"{name[-40:]:40s} {len(points):3d} {spread(ratios):11.2f} {q:6.2f} {spread(at_q):11.2f} {drop_one:7.2f}  {listing}")
