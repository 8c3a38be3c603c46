"""How the cosine check's bound (onnxcomp.core.budget._tail_bound) covers the worst of a fresh set, against Hill's
mean estimator it replaced (branch calzoo5): per-sample errors drawn log-normal, or as a mixture where a share of
the samples err about 1,000x more than the rest (magika's check files). Prints, per case, the share of draws whose
bound lies above the worst of a fresh set of the same size, and the median ratio of the bound to the worst
measured. Seeded; numpy only.

    python bench/tail_bound.py [--draws 4000]
"""

import argparse
import math

import numpy as np

from onnxcomp.core.budget import _tail_bound


def hill_bound(errors: np.ndarray, z: float = 1.0) -> float:
    """The bound before branch calzoo5: Hill's mean of log(e_(j) / e_(k+1)), variance gamma^2 / k, no cap."""
    n = len(errors)
    k = min(n - 1, max(2, int(round(math.sqrt(n)))))
    top = np.sort(errors)[::-1][:k + 1]
    gamma = float(np.mean(np.log(top[:k] / top[k])))
    return float(top[0]) * math.exp(min(700.0, z * gamma * math.sqrt(math.pi ** 2 / 6 + math.log(n / k) ** 2 / k)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = [(f"log-normal sd {sd}", lambda n, sd=sd: rng.lognormal(np.log(1e-3), sd, n)) for sd in (0.5, 1.0)]
    for share in (0.03, 0.1, 0.3):
        def mixture(n, share=share):
            far = rng.random(n) < share
            return np.where(far, rng.lognormal(np.log(0.01), 0.5, n), rng.lognormal(np.log(1e-5), 1.0, n))
        cases.append((f"mixture, {share:.0%} far out", mixture))
    print("| errors | n | bound | covers the fresh worst | bound / worst measured (median) | bounds at 2 |")
    print("|---|---|---|---|---|---|")
    for name, draw in cases:
        for n in (32, 64):
            for label, bound in (("Hill's mean (before)", hill_bound), ("median of spacings", lambda e: _tail_bound(e, 1.0))):
                covered, ratios, capped = 0, [], 0
                for _ in range(args.draws):
                    seen, fresh = draw(n), draw(n)
                    value = bound(seen)
                    covered += fresh.max() <= value
                    ratios.append(value / seen.max())
                    capped += value >= 2
                print(f"| {name} | {n} | {label} | {covered / args.draws:.1%} | {np.median(ratios):.2f} | "
                      f"{capped / args.draws:.1%} |")


if __name__ == "__main__":
    main()
