"""The upper-envelope predictions of a calibrated run (branch vgg12: a weight whose anchors spread by more than
autotune.SPREAD is predicted from their largest ratio) against the errors measured at the same settings by a run of
the code before (every trial of such a weight measured in onnxruntime), same model, options and seeds.

The predicted trials are read from the new run's compress log (-v: the proxy's 'predicted' lines give the anchors'
spread), the measured errors from the old run's sensitivity cache (OLD_CACHE '-': none). Also from the log alone,
out of sample: each trial measured after a weight's first ANCHORS anchors against what the largest ratio of the
anchors before it predicts (a spot check or a trial outside the range, measured, tells how the envelope would have
done there), by where its eps lies against those anchors'. While the new run's anchors spread by more than
SPREAD the old run's, a superset, did too, so the old run measured those settings. The new run's measured settings
are the same computation in both (checked: their errors must be equal).
usage: python bench/envelope_check.py NEW_LOG OLD_CACHE.json [--allowed E] [--power P]
  (--allowed: also the figures over the settings whose measured error is at most E, e.g. the budget's error)"""
import argparse
import json
import re

import numpy as np

LINE = re.compile(r"DEBUG: (\S+) at sparsity ([0-9.e-]+), (\d+) bits: (row sample )?eps ([0-9.e+-]+), "
                  r"(predicted|measured) ([0-9.e+-]+) \((\d+) anchors(?:, ratios ([0-9.e+-]+)-([0-9.e+-]+), spread ([0-9.]+))?\)")
parser = argparse.ArgumentParser()
parser.add_argument("log")
parser.add_argument("old")
parser.add_argument("--allowed", type=float)
parser.add_argument("--spread", type=float, default=4.0, help="autotune.SPREAD")
parser.add_argument("--power", type=float, default=1.0, help="the proxy's power p: 1 for kl and cosine, 0.5 for rel_l2")
args = parser.parse_args()
old = json.load(open(args.old)) if args.old != "-" else {}
lookup = {(name, p[0], p[1]): p[3] for name, points in old.items() for p in points if p[0] is not None and len(p) <= 4}
pairs, same, differ, history, held_out = [], 0, [], {}, []
for line in open(args.log):
    match = LINE.search(line)
    if not match:
        continue
    name, sparsity, bits, _, eps, kind, error, _, low, high, spread = match.groups()
    key = (name, float(sparsity), int(bits))
    if kind == "measured":
        anchors = history.setdefault(name, [])
        used = [(e, m) for e, m in anchors if e > 0 and m > 1e-6]
        if len(used) >= 3 and float(error) > 1e-6:
            ratios = [m / e ** args.power for e, m in used]
            low, high = min(e for e, _ in used), max(e for e, _ in used)
            zone = ("below" if float(eps) < low else "within" if float(eps) <= high else
                    "above, within 4x" if float(eps) <= 4 * high else "beyond 4x")
            spread_then = max(ratios) / min(ratios)
            held_out.append((name, key[1], key[2], float(eps), max(ratios) * float(eps) ** args.power, float(error),
                             zone, spread_then))
        anchors.append((float(eps), float(error)))
    if key not in lookup:
        continue
    truth = lookup[key]
    if kind == "measured":
        same += abs(truth - float(error)) <= 5e-4 * abs(truth)  # the log's 4 digits
        if abs(truth - float(error)) > 5e-4 * abs(truth):
            differ.append((key, float(error), truth))
    elif spread is not None and float(spread) > args.spread:
        used = [e for e, m in history.get(name, []) if e > 0 and m > 1e-6]
        zone = "within" if min(used) <= float(eps) <= max(used) else "above" if float(eps) > max(used) else "below"
        pairs.append((name, key[1], key[2], float(eps), float(error), truth, zone))
print(f"measured in both: {same} settings equal, {len(differ)} differ {differ[:3]}")
print(f"upper-envelope predictions with a measured error to compare: {len(pairs)} on {len({p[0] for p in pairs})} weights")
if pairs:
    ratio = np.array([p[4] / p[5] if p[5] > 0 else np.inf for p in pairs])
    def summary(chosen, label):
        if not chosen.any():
            print(f"  {label}: none")
            return
        r = ratio[chosen]
        print(f"  {label}: {chosen.sum()} settings; predicted / measured min {r.min():.3g}, median {np.median(r):.3g}, "
              f"max {r.max():.3g}; below 1 (under-predicted): {(r < 1).sum()}")
    summary(np.ones(len(pairs), bool), "all")
    for zone in ("below", "within", "above"):
        summary(np.array([p[6] == zone for p in pairs]), f"eps {zone} the anchors' range")
    if args.allowed is not None:
        summary(np.array([p[5] <= args.allowed for p in pairs]), f"measured error <= {args.allowed:g}")
    for p, r in sorted(zip(pairs, ratio), key=lambda x: x[1])[:12]:
        print(f"    {p[0][-48:]:48s} sparsity {p[1]:<5g} {p[2]} bits: eps {p[3]:.3g} ({p[6]}), predicted {p[4]:.3g}, "
              f"measured {p[5]:.3g} ({r:.2f}x)")
print(f"out of sample: {len(held_out)} trials measured after 3 anchors; the largest earlier ratio's prediction / measured:")
for zone in ("below", "within", "above, within 4x", "beyond 4x"):
    chosen = [h for h in held_out if h[6] == zone]
    for spread_label, pick in (("anchors spread > SPREAD", lambda h: h[7] > args.spread), ("spread <= SPREAD", lambda h: h[7] <= args.spread)):
        rows = [h for h in chosen if pick(h)]
        if rows:
            r = np.array([h[4] / h[5] for h in rows])
            print(f"  eps {zone:17s} {spread_label:24s}: {len(rows):3d} trials, min {r.min():.3g}, median {np.median(r):.3g}, "
                  f"below 1: {(r < 1).sum()}" + "".join(f"; {h[0][-30:]} s{h[1]:g} {h[2]}b {h[4] / h[5]:.2f}x" for h in rows if h[4] < h[5])[:600])
