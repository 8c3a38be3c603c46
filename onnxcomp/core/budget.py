"""Compressing to a quality budget: metrics, and the allocation of per-layer settings (numpy only).

Each layer l has measured candidates c = (sparsity, bits) with stored bytes B_l(c) and an output error
e_l(c), the quality loss when only that layer is compressed. Assuming errors add up, the allocation picks one
candidate per layer to minimise sum_l B_l(c_l) subject to sum_l e_l(c_l) <= budget: a multiple-choice
knapsack, solved exactly by dynamic programming over Pareto frontiers. Metrics turn into additive errors as: cosine -> 1 - cos, top1 -> 1 - agreement,
rel_l2 -> relative L2 error, accuracy -> drop in top-1 accuracy against labels, kl -> mean KL divergence of the
softmax outputs, ctc -> the character disagreement of greedy CTC decodings (edits over the reference's characters).
For rel_l2 the errors add up as squares (QUADRATURE: the allocation is given e_l^2 and budget^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import InvalidOptionError

METRICS = ("cosine", "top1", "rel_l2", "accuracy", "kl", "ctc")
COUNTED = ("top1", "accuracy", "ctc")  # measured by counting samples or characters: the curves use a smooth stand-in
CTC_BLANK = 0  # the class a CTC output emits between characters (PaddleOCR's and ddddocr's recognisers: class 0)
RESOLUTION = 20000
MAX_STATES = 200_000
COSINE_ERROR_MAX = 2.0  # 1 - cos lies in [0, 2]


@dataclass(frozen=True)
class Budget:
    metric: str
    value: float

    @property
    def max_error(self) -> float:
        """The error the budget allows, in the additive units of ``error``."""
        if self.metric in ("cosine", "top1", "ctc"):
            return 1.0 - self.value
        return self.value

    def met(self, error: float) -> bool:
        return error <= self.max_error + 1e-12


def parse_budget(text: str) -> Budget:
    """``cosine=0.99`` (min cosine), ``top1=0.99`` (min top-1 agreement), ``rel_l2=0.05`` (max relative L2
    error), ``accuracy=0.01`` (max top-1 accuracy drop against the data's labels, as a fraction; a negative value
    is a change in points: ``accuracy=-1`` allows a drop of one point), ``kl=0.05`` (max mean KL
    divergence of the softmax outputs, in nats: smooth, for class scores) or ``ctc=0.99`` (min character agreement
    of the greedy CTC decodings of an output of per-position class scores [samples, positions, classes], blank
    class 0, with the original's: 1 - total edit distance / total characters the original reads)."""
    name, _, value = text.partition("=")
    name = name.strip().lower().replace("-", "_")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if name not in METRICS or not math.isfinite(number):
        raise InvalidOptionError(f"budget {text!r} is not understood: use one of {', '.join(m + '=VALUE' for m in METRICS)}")
    if name in ("cosine", "top1", "ctc") and not 0 < number <= 1:
        raise InvalidOptionError(f"budget {text!r}: {name} must be in (0, 1]")
    if name == "accuracy" and number < 0:  # a change in points: accuracy=-1 allows a drop of one point
        number = -number / 100
    if name in ("rel_l2", "kl") and number < 0:
        raise InvalidOptionError(f"budget {text!r}: {name} must be >= 0")
    return Budget(name, number)


def allocation_metric(metric: str, reference: np.ndarray) -> str:
    """The metric the sensitivity curves use for a budget in ``metric``: itself when it is smooth; for top-1,
    accuracy and ctc, which move in whole samples or characters, ``kl`` (class scores [samples, classes]) or else
    ``rel_l2``. Raises InvalidOptionError for a ctc budget on an output that is not [samples, positions, classes]."""
    if metric == "ctc" and (reference.ndim != 3 or reference.shape[2] < 2):
        raise InvalidOptionError(f"a ctc budget reads per-position class scores [samples, positions, classes]; the "
                                 f"budget's output is {list(reference.shape)}")
    if metric not in COUNTED:
        return metric
    return "kl" if reference.ndim == 2 and reference.shape[1] > 1 else "rel_l2"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def error(metric: str, reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The additive error of ``output`` against ``reference`` (first model output, samples first); ``kl`` is
    the mean KL divergence of softmax(output) from softmax(reference), in nats."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = output.reshape(len(output), -1).astype(np.float64)
    if metric == "kl":
        log_p, log_q = _log_softmax(ref), _log_softmax(out)
        return float(np.mean((np.exp(log_p) * (log_p - log_q)).sum(1)))
    if metric == "cosine":
        return float(_cosine_errors(ref, out).max())
    if metric == "top1":
        return float(1.0 - np.mean(ref.argmax(1) == out.argmax(1)))
    if metric == "ctc":
        edits, chars = ctc_edits(reference, output)
        return float(edits.sum() / max(1, chars.sum()))
    if metric == "rel_l2":
        return float(np.linalg.norm(out - ref) / (np.linalg.norm(ref) + 1e-30))
    if labels is None:
        raise InvalidOptionError("an accuracy budget needs labels: add an array 'labels' to the calibration data")
    return float(np.mean(ref.argmax(1) == labels) - np.mean(out.argmax(1) == labels))


def error_bound(metric: str, reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None = None,
                z: float = 1.0) -> float:
    """The error at a confidence bound ``z`` standard errors above the measured one, for the metrics measured by
    counting samples, and for the others from the spread of their per-sample terms.

    top1: the Wilson score upper bound of the disagreement rate p = k / n (Wilson 1927),
    (p + z^2/2n + z sqrt(p(1 - p)/n + z^2/4n^2)) / (1 + z^2/n); it stays above 0 when k = 0, unlike the normal
    approximation. cosine: the largest per-sample error 1 - cos on n samples, raised by z standard deviations of
    the largest of n fresh samples (``_tail_bound``), since a min-cosine budget is judged on the worst sample of
    data the search never saw. accuracy: the paired difference of two accuracies on the same n samples, with b samples the
    compressed model gets wrong that the original got right and c the reverse, has the standard error
    sqrt(b + c - (b - c)^2/n) / n (the variance behind McNemar's test); the bound is (b - c)/n + z times it, or
    the Wilson upper bound of the hurt rate b/n minus c/n when that is larger, which keeps a margin from the sample
    count when no prediction changed (b = c = 0 gives about 1/(n + 1) at z = 1, as top1 does). kl: the mean of
    the per-sample divergences plus z standard errors of that mean. rel_l2: R^2 = sum a_i / sum b_i (a_i the
    squared error of sample i, b_i its squared reference norm) is a ratio estimator, whose standard error is
    sqrt(n / (n - 1) sum (a_i - R^2 b_i)^2) / sum b_i (Cochran 1977, ratio estimation, first order); the bound is
    sqrt(R^2 + z times it). ctc: the edits per reference character, R = sum e_i / sum c_i, also a ratio estimator
    over samples (a sample's characters are not independent: one damaged line holds several edits), so R + z times
    the same first-order standard error, sqrt(n / (n - 1) sum (e_i - R c_i)^2) / sum c_i, or the Wilson upper bound
    of R over sum c_i characters when that is larger, which keeps a margin from the character count when no
    character changed (about 1 / (sum c_i + 1)). Fewer than 2 samples give no spread: the bound is then infinite
    unless the error is 0."""
    if metric == "cosine":
        return _tail_bound(_cosine_errors(reference, output), z)
    if metric in ("kl", "rel_l2"):
        return _mean_bound(metric, reference, output, z)
    if metric == "ctc":
        return _ctc_bound(*ctc_edits(reference, output), z)
    ref = reference.reshape(len(reference), -1).argmax(1)
    out = output.reshape(len(output), -1).argmax(1)
    n = len(ref)
    if metric == "top1":
        return _wilson_upper(float(np.mean(ref != out)), n, z)
    if labels is None:
        raise InvalidOptionError("an accuracy budget needs labels: add an array 'labels' to the calibration data")
    hurt = int(np.sum((ref == labels) & (out != labels)))
    helped = int(np.sum((ref != labels) & (out == labels)))
    spread = math.sqrt(max(hurt + helped - (hurt - helped) ** 2 / n, 0.0)) / n
    return max((hurt - helped) / n + z * spread, _wilson_upper(hurt / n, n, z) - helped / n)


def ctc_decode(scores: np.ndarray) -> list[np.ndarray]:
    """Greedy CTC decoding of per-position class scores [samples, positions, classes]: each sample's argmax per
    position, repeats merged, the blank (CTC_BLANK) dropped; a list of int64 arrays of class indices."""
    best = np.asarray(scores).argmax(-1)
    decoded = []
    for row in best.reshape(len(best), -1):
        fresh = np.ones(len(row), dtype=bool)
        fresh[1:] = row[1:] != row[:-1]
        decoded.append(row[fresh & (row != CTC_BLANK)].astype(np.int64))
    return decoded


def edit_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance of two sequences (insertions, deletions, substitutions cost 1), one row at a time."""
    previous = np.arange(len(b) + 1)
    for i, value in enumerate(a, 1):
        current = np.empty_like(previous)
        current[0] = i
        substitute = previous[:-1] + (b != value)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, substitute[j - 1])
        previous = current
    return int(previous[-1])


def ctc_edits(reference: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the edit distance of ``output``'s greedy CTC decoding from ``reference``'s, and the number of
    characters ``reference``'s decoding holds (int64 [samples] each; scores [samples, positions, classes])."""
    ref, out = ctc_decode(reference), ctc_decode(output)
    edits = np.asarray([edit_distance(r, o) if not np.array_equal(r, o) else 0 for r, o in zip(ref, out)], dtype=np.int64)
    return edits, np.asarray([len(r) for r in ref], dtype=np.int64)


def _ctc_bound(edits: np.ndarray, chars: np.ndarray, z: float) -> float:
    """``error_bound`` for ctc from per-sample edits and reference characters (its docstring)."""
    total, wrong = int(chars.sum()), int(edits.sum())
    if total == 0:  # the original reads no character: nothing to confirm an agreement on
        return math.inf
    ratio = wrong / total
    wilson = _wilson_upper(min(ratio, 1.0), total, z)
    n = len(chars)
    if n < 2:
        return wilson if wrong == 0 else math.inf
    spread = math.sqrt(n / (n - 1) * float(np.sum((edits - ratio * chars) ** 2))) / total
    return max(ratio + z * spread, wilson)


def _mean_bound(metric: str, reference: np.ndarray, output: np.ndarray, z: float) -> float:
    """``error_bound`` for kl and rel_l2: the measured error plus z standard errors from the per-sample terms."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = output.reshape(len(output), -1).astype(np.float64)
    n = len(ref)
    if metric == "kl":
        log_p, log_q = _log_softmax(ref), _log_softmax(out)
        terms = (np.exp(log_p) * (log_p - log_q)).sum(1)
        value = float(np.mean(terms))
        if value <= 0:
            return value
        return value + z * float(np.std(terms, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    a, b = ((out - ref) ** 2).sum(1), (ref ** 2).sum(1)
    total = float(b.sum()) + 1e-300
    squared = float(a.sum()) / total
    if squared <= 0:
        return 0.0
    if n < 2:
        return math.inf
    spread = math.sqrt(n / (n - 1) * float(np.sum((a - squared * b) ** 2))) / total
    return math.sqrt(squared + z * spread)


def _cosine_errors(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """1 - cos per sample (first axis), float64 [samples]."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = output.reshape(len(output), -1).astype(np.float64)
    return 1.0 - (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-30)


def _tail_bound(errors: np.ndarray, z: float) -> float:
    """An upper bound of the largest per-sample error on n fresh samples, from n measured ``errors`` (>= 0), at most
    2 (the range of 1 - cos).

    The errors' upper tail is taken as Pareto-like, i.e. exponential in log e (this suits 1 - cos: a weight change
    scales every sample's error by about the same factor, so the spread of log e is the data's, not the
    compression level's). Of the k = round(sqrt(n)) largest errors e_(1) >= ... >= e_(k+1), the weighted log
    spacings j (log e_(j) - log e_(j+1)), j = 1..k, are then about independent exponentials of mean gamma, the tail
    scale (Renyi's representation, Renyi 1953; Beirlant, Goegebeur, Segers and Teugels 2004: Hill's
    estimator, Hill 1975, is their mean). gamma is estimated by their median over ln 2 (an exponential's median is
    gamma ln 2), whose asymptotic variance is gamma^2 / (k ln^2 2) (the sample median's 1 / (4 k f(m)^2), f(m) =
    1 / (2 gamma) the density at the median); the median breaks down only when half the spacings are outliers
    (the generalized median estimators of a Pareto tail, Brazauskas and Serfling 2000). Hill's mean was
    degenerate on small sets with a few far-out samples: on magika's 34 check files one file's error far above the
    rest made the bound 15.86, 766x the worst error measured, for an error that cannot exceed 2. The largest log
    error of n samples is log e_(k+1) + gamma (log(n / k) + G), G a standard Gumbel variable of variance pi^2 / 6
    (Gnedenko 1943), so its standard deviation is s = gamma sqrt(pi^2 / 6 + log(n / k)^2 / (k ln^2 2)): the fresh
    maximum's own spread plus the uncertainty of gamma. The bound is min(2, e_max exp(z s)). On log-normal errors
    (sd 0.5, 32 samples) it lies above the worst of 32 fresh samples about 87 % of the time at z = 1, at about 1.6x
    the worst measured (Hill's mean: 83 %, 1.5x); on mixtures where 3-30 % of the samples err 1,000x more, its
    median bound is 1.9-7.5x the worst measured where Hill's reached 176x (bench/tail_bound.py, docs/benchmarks.md). The
    sample count sets the margin through k and log(n / k); fewer than 3 samples leave no tail to estimate, and
    the bound is then 2 (nothing can be confirmed on them)."""
    n = len(errors)
    e_max = float(np.max(errors)) if n else math.inf
    if e_max <= 0:
        return max(e_max, 0.0)
    if n < 3:
        return COSINE_ERROR_MAX
    k = min(n - 1, max(2, int(round(math.sqrt(n)))))
    top = np.log(np.sort(np.maximum(errors, 1e-300))[::-1][:k + 1])
    gamma = float(np.median(np.arange(1, k + 1) * (top[:k] - top[1:]))) / math.log(2)
    exponent = z * gamma * math.sqrt(math.pi ** 2 / 6 + math.log(n / k) ** 2 / (k * math.log(2) ** 2))
    return min(COSINE_ERROR_MAX, e_max * math.exp(min(exponent, 700.0)))


def _wilson_upper(p: float, n: int, z: float) -> float:
    """The Wilson score upper bound of a rate p measured on n samples, z standard errors (Wilson 1927)."""
    z2 = z * z
    return (p + z2 / (2 * n) + z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n)


# Allocation metrics whose per-weight errors add up as squares. The relative L2 errors that weights compressed apart
# cause in the output are close to uncorrelated, so the output's squared error is about the sum of theirs (a
# perturbation's squared norm: the cross terms average out); summed as they are, they add as if every weight's error
# pointed the same way (the triangle inequality's worst case). cosine (1 - cos) and kl are already second order in a
# small output change and add as they are. Measured on the zoo's rel_l2 budgets (docs/benchmarks.md, cal11b;
# bench/budget_rounds.py): the trials of ddddocr-det's run s15-cal-det measured 0.20-0.36x their summed predictions
# and 1.2-2.2x the root sum of their squares (12 trials), yolov8n-nudenet's (calzoo8) 0.19-0.28x and 1.0-1.5x (9).
QUADRATURE = frozenset({"rel_l2"})


def additive(metric: str | None, error: float) -> float:
    """``error`` (one weight's predicted model error in ``metric``) in the units that add up over weights: its square
    for the metrics in QUADRATURE, else itself."""
    return error * error if metric in QUADRATURE else error


def combined(metric: str | None, errors) -> float:
    """The model's predicted error in ``metric`` from the weights' own ``errors``: the root of the sum of squares for
    the metrics in QUADRATURE, else the sum."""
    total = sum(additive(metric, float(e)) for e in errors)
    return math.sqrt(total) if metric in QUADRATURE else total


def allocate(curves: dict[str, list[tuple[int, float]]], max_error: float) -> dict[str, int] | None:
    """Index of the chosen (bytes, error) candidate per layer: least total bytes with summed error within
    ``max_error``; None if even the most accurate choice per layer exceeds it.

    Dynamic programming over the Pareto frontier of (error, bytes) of the layers seen so far: exact, and
    small in practice; past ``MAX_STATES`` states the errors are bucketed (rounded up) to bound the work.
    """
    # The states as arrays (total error, total bytes) with back-pointers (the state they extend, the candidate
    # taken), in the order a list of (error, bytes, picks) tuples would have: state-major, candidate-minor, then a
    # stable sort by (error, bytes); the same states and picks as that list (tests/test_budget.py keeps it).
    errors, sizes = np.zeros(1), np.zeros(1, dtype=np.int64)
    steps = []
    for name in curves:
        cand_sizes = np.asarray([b for b, _ in curves[name]], dtype=np.int64)
        cand_errors = np.asarray([e for _, e in curves[name]], dtype=np.float64)
        feasible = errors[:, None] + np.maximum(cand_errors, 0.0)[None, :] <= max_error + 1e-12
        parent, pick = np.nonzero(feasible)  # row-major: state-major, candidate-minor
        if not len(parent):
            return None
        total = errors[parent] + cand_errors[pick]
        size = sizes[parent] + cand_sizes[pick]
        if len(total) > MAX_STATES:
            unit = max(max_error, 1e-12) / RESOLUTION
            total = np.ceil(total / unit - 1e-9) * unit
        order = np.lexsort((size, total))  # stable: ties keep the state-major order
        total, size, parent, pick = total[order], size[order], parent[order], pick[order]
        # the Pareto frontier: each kept state strictly smaller than every state before it
        before = np.minimum.accumulate(np.concatenate([[np.iinfo(np.int64).max], size[:-1]]))
        kept = size < before
        errors, sizes = total[kept], size[kept]
        steps.append((parent[kept], pick[kept]))
    state = int(np.argmin(sizes))
    picks = []
    for parent, pick in reversed(steps):
        picks.append(int(pick[state]))
        state = int(parent[state])
    return dict(zip(curves, reversed(picks)))


def nested_path(curves: dict[str, list[tuple[int, float]]], start: dict[str, int], end: dict[str, int],
                steps: int) -> list[dict[str, int]]:
    """Up to ``steps - 1`` allocations between ``start`` and ``end`` (each weight -> index of its candidate in
    ``curves``, (bytes, error) per candidate as for ``allocate``), each ``start`` with a prefix of one fixed order
    of the differing weights switched to ``end``'s candidate, so every allocation holds the switches of the one
    before it (nested). The order: first the switches that add no predicted error (least bytes first: those that
    buy error back with bytes come before those that save both), then the others by bytes saved per error added,
    largest first (the greedy order of a fractional knapsack, Dantzig 1957); ties by weight name. Allocation k
    (1 <= k < steps) is the longest prefix whose summed predicted error stays within a fraction k / steps of the
    way from ``start``'s to ``end``'s (k / steps of the switches, by count, when that way adds no error);
    duplicates, ``start`` and ``end`` themselves are left out. Deterministic: same input, same list."""
    moves = []
    for name in sorted(n for n in start if start[n] != end[n]):
        (bytes_from, error_from), (bytes_to, error_to) = curves[name][start[name]], curves[name][end[name]]
        moves.append((name, bytes_from - bytes_to, error_to - error_from))  # (weight, bytes saved, error added)
    free = sorted((m for m in moves if m[2] <= 0), key=lambda m: (m[1], m[0]))
    costly = sorted((m for m in moves if m[2] > 0), key=lambda m: (-m[1] / m[2], m[0]))
    order = free + costly
    added = np.cumsum([m[2] for m in order]) if order else np.zeros(0)
    total = float(added[-1]) if order else 0.0
    path, taken = [], set()
    for k in range(1, steps):
        if total > 0:
            target = k / steps * total * (1 + 1e-12)  # the sums fall through the free switches, then rise
            length = max((i + 1 for i in range(len(order)) if added[i] <= target), default=0)
        else:
            length = (k * len(order)) // steps
        if 0 < length < len(order) and length not in taken:
            taken.add(length)
            path.append({**start, **{m[0]: end[m[0]] for m in order[:length]}})
    return path
