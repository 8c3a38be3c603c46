"""How the held-back subset of a spread weight's trials (autotune.held_subset) fares, from a calibrated run's compress
log (-v) of a model where it applies: per weight, its trials measured on every held-back sample, on the subset
alone, and predicted; and, for each trial measured on every sample, its error on the subset's rows from the same run
(the log's "(E on the N of the subset)") against the error on all of them: the ratio subset / all, their median,
range and geometric spread, which is what a trial measured on the subset misstates.
usage: python bench/subset_check.py LOG"""
import argparse
import re

import numpy as np

TRIAL = re.compile(r"DEBUG: (\S+) at sparsity ([0-9.e-]+), (\d+) bits: (?:row sample )?eps ([0-9.e+-]+), "
                   r"(measured|predicted) ([0-9.e+-]+)(.*)")
PAIR = re.compile(r"^ \(([0-9.e+-]+) on the (\d+) of the subset\)")
ON_SUBSET = re.compile(r"^ on (\d+) of (\d+) held-back samples")
parser = argparse.ArgumentParser()
parser.add_argument("log")
args = parser.parse_args()
counts, pairs = {}, []
for line in open(args.log):
    match = TRIAL.search(line)
    if not match:
        continue
    name, sparsity, bits, eps, kind, error, rest = match.groups()
    count = counts.setdefault(name, {"all": 0, "subset": 0, "predicted": 0})
    if kind == "predicted":
        count["predicted"] += 1
    elif ON_SUBSET.match(rest):
        count["subset"] += 1
    else:
        count["all"] += 1
        pair = PAIR.match(rest)
        if pair and float(error) > 0:
            pairs.append((name, float(sparsity), int(bits), float(error), float(pair.group(1))))
print(f"{'weight':45s} {'all':>4s} {'subset':>6s} {'predicted':>9s}")
for name, count in counts.items():
    print(f"{name[-45:]:45s} {count['all']:4d} {count['subset']:6d} {count['predicted']:9d}")
total = {k: sum(c[k] for c in counts.values()) for k in ("all", "subset", "predicted")}
print(f"{'total':45s} {total['all']:4d} {total['subset']:6d} {total['predicted']:9d}")
if pairs:
    ratios = np.array([p[4] / p[3] for p in pairs])
    print(f"\n{len(pairs)} trials measured on every sample: error on the subset's rows / on all of them: median "
          f"{np.median(ratios):.3f}, range {ratios.min():.3f}-{ratios.max():.3f}, geometric mean {np.exp(np.log(ratios).mean()):.3f}, "
          f"geometric sd factor {np.exp(np.log(ratios).std()):.3f}")
    for name, sparsity, bits, error, subset in pairs:
        print(f"  {name[-45:]:45s} {sparsity:g}/{bits}: all {error:.4g}, subset {subset:.4g}, ratio {subset / error:.3f}")
