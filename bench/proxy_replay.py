"""Replay each weight's curve trials (their order and eps from a calibrated run's -v compress log) against the errors
another run of the same options wrote to its sensitivity cache, under three proxy rules (main's: spread weights
measured; the upper envelope, ONNXCOMP_ENVELOPE; log-log interpolation between the anchors that bracket eps, measured
outside them): how many trials each measures and how many it under-predicts. A trial the cache's run predicted
itself counts as measured at its prediction (main's rule then matches it exactly), so only spread weights' settings
are true measurements, and the log gives eps to 4 digits (under-predicted: by more than 0.1 %): indicative (branch vgg12).
usage: python bench/proxy_replay.py LOG 'CACHE_GLOB' POWER  (POWER: 1 for kl and cosine, 0.5 for rel_l2)"""
import json, re, sys, glob
import numpy as np
LINE = re.compile(r"DEBUG: (\S+) at sparsity ([0-9.e-]+), (\d+) bits: (row sample )?eps ([0-9.e+-]+), (predicted|measured)")
SPARS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
log, cache, power = sys.argv[1], json.load(open(glob.glob(sys.argv[2])[0])), float(sys.argv[3])
truth = {(n, p[0], p[1]): p[3] for n, pts in cache.items() for p in pts if p[0] is not None}
trials = {}
for line in open(log):
    m = LINE.search(line)
    if m:
        n, s, b, _, e, _ = m.groups()
        trials.setdefault(n, []).append((float(s), int(b), float(e)))

def rule_main(anchors, eps):
    r = [m / e ** power for e, m in anchors if e > 0 and m > 1e-6]
    used = [e for e, m in anchors if e > 0 and m > 1e-6]
    if len(r) < 3 or max(r) > 4 * min(r) or not min(used) / 4 <= eps <= max(used) * 4: return None
    return np.exp(np.mean(np.log(r))) * eps ** power

def rule_envelope(anchors, eps):
    r = [m / e ** power for e, m in anchors if e > 0 and m > 1e-6]
    used = [e for e, m in anchors if e > 0 and m > 1e-6]
    if len(r) < 3 or not min(used) / 4 <= eps <= max(used) * 4: return None
    if max(r) > 4 * min(r):
        return max(r) * eps ** power if eps >= min(used) else None
    return np.exp(np.mean(np.log(r))) * eps ** power

def rule_between(anchors, eps):
    """main's rule; where the anchors spread, log-log interpolation between the two that bracket eps (the larger
    error where the error falls with eps), measured outside them."""
    pred = rule_main(anchors, eps)
    if pred is not None: return pred
    pts = sorted((e, m) for e, m in anchors if e > 0 and m > 1e-6)
    if len(pts) < 3 or not pts[0][0] <= eps <= pts[-1][0]: return None
    for (e0, m0), (e1, m1) in zip(pts, pts[1:]):
        if e0 <= eps <= e1:
            if e1 == e0: return max(m0, m1)
            t = np.log(eps / e0) / np.log(e1 / e0)
            return max(m0, m1) if m1 < m0 else np.exp(np.log(m0) * (1 - t) + np.log(m1) * t)
    return None

for label, rule in (("main", rule_main), ("envelope v2", rule_envelope), ("between anchors", rule_between)):
    measured = predicted = under = 0; worst = []
    for n, ts in trials.items():
        anchors, done = [], set()
        for s, b, e in ts:
            t = truth.get((n, s, b))
            if t is None: continue
            step = SPARS.index(s) if s in SPARS else 1
            spot = step % 4 == 0 and s not in done
            done.add(s)
            p = None if spot else rule(anchors, e)
            if p is None:
                measured += 1; anchors.append((e, t))
            else:
                predicted += 1
                if p < t * (1 - 1e-3): under += 1; worst.append((p / t, n[-28:], s, b, t))
    worst.sort()
    print(f"{label:16s}: measured {measured}, predicted {predicted}, under-predicted {under}; worst " +
          "; ".join(f"{w[1]} s{w[2]:g} {w[3]}b {w[0]:.2f}x (m {w[4]:.2g})" for w in worst[:4]))
