"""Pruning: which weights to set to zero, from a score per weight (numpy only).

A score function maps a weight tensor (and, for activation-aware scores, its layer's calibration
statistics) to a non-negative score per weight; the lowest-scoring fraction ``s`` is pruned. Magnitude
pruning (Deep Compression's) uses ``score = |w|``. ``scope="layer"`` prunes the fraction s of every layer;
``scope="global"`` ranks all layers' scores together against one threshold. Ties are broken by position so
that the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxcomp.core.native import native

ScoreFunction = Callable[[np.ndarray], np.ndarray]


def magnitude_score(weight: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(weight, dtype=np.float32))


SCORES: dict[str, ScoreFunction] = {"magnitude": magnitude_score}


def keep_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """True for the weights kept when the ``sparsity`` fraction with the lowest scores is pruned.

    Ties at the threshold are pruned in position order, exactly as ``keep_mask_reference`` (a stable
    argsort) does, but in O(n): the threshold is the p-th smallest score (np.partition), everything below
    it is pruned, then the first of the scores equal to it until p are pruned.
    """
    flat = np.asarray(scores).ravel()
    pruned = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if pruned:
        threshold = np.partition(flat, pruned - 1)[pruned - 1]
        if not np.isfinite(threshold):  # NaN order is numpy's business: leave it to the sort
            return keep_mask_reference(scores, sparsity)
        below = flat < threshold
        keep[below] = False
        ties = pruned - int(np.count_nonzero(below))
        del below
        keep[np.flatnonzero(flat == threshold)[:ties]] = False
    return keep.reshape(np.shape(scores))


def magnitude_keep_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """``keep_mask(magnitude_score(weight), sparsity)`` (finite weights), in three passes of the compiled
    module and no copy of the weight (onnxcomp._native.magnitude_keep_mask); the same mask, byte for byte."""
    flat = np.ascontiguousarray(weight, dtype=np.float32).ravel()
    if native is None:
        return keep_mask(magnitude_score(weight), sparsity)
    return native.magnitude_keep_mask(flat, int(round(sparsity * flat.size))).reshape(np.shape(weight))


def keep_mask_reference(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """The straightforward ``keep_mask``: prune the first ``round(sparsity * n)`` of a stable argsort."""
    flat = np.asarray(scores).ravel()
    pruned = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if pruned:
        keep[np.argsort(flat, kind="stable")[:pruned]] = False
    return keep.reshape(np.shape(scores))


def global_keep_masks(scores: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """One threshold over all layers' scores: the ``sparsity`` fraction of all weights is pruned."""
    names = list(scores)
    flat = np.concatenate([np.asarray(scores[n]).ravel() for n in names]) if names else np.zeros(0)
    keep = keep_mask(flat, sparsity)
    masks, start = {}, 0
    for name in names:
        size = np.size(scores[name])
        masks[name] = keep[start:start + size].reshape(np.shape(scores[name]))
        start += size
    return masks


# Activation-aware scores. ``rows`` is the weight as [outputs, inputs]; ``stats`` its LayerStatistics.

def wanda_score(rows: np.ndarray, stats) -> np.ndarray:
    """Wanda: ``S_ij = |W_ij| * ||X_j||_2``, compared within each output row."""
    return np.abs(rows) * stats.norms[None, :]


@dataclass
class TfidfParameters:
    """Knobs of the TF-IDF score (defaults: p = 1, threshold 0, smoothing 1, constant 1, exponent 1)."""

    power: float = 1.0  # p, on |w|
    smoothing: float = 1.0  # alpha, added to counts
    constant: float = 1.0  # c, added to the IDF so that inputs firing everywhere keep a positive score
    exponent: float = 1.0  # e, on TF x IDF


def tfidf_score(rows: np.ndarray, stats, params: TfidfParameters | None = None) -> np.ndarray:
    """``S_ij = |w_ij|^p * (TF_j * IDF_j)^e`` with
    ``TF_j = (fire_rows_j + a) / (rows + a) * mean|x_j|`` (inputs that fire often and strongly) and
    ``IDF_j = log((samples + a) / (fire_samples_j + a)) + c`` (inputs that fire selectively).
    """
    p = params or TfidfParameters()
    a = p.smoothing
    tf = (stats.fire_rows + a) / (stats.rows + a) * (stats.sum_abs / max(stats.rows, 1))
    idf = np.log((stats.samples + a) / (stats.fire_samples + a)) + p.constant
    return np.abs(rows) ** p.power * np.maximum(tf * idf, 0.0)[None, :] ** p.exponent


def row_keep_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Prune the ``sparsity`` fraction with the lowest scores within every row (Wanda's comparison group)."""
    pruned = int(round(sparsity * scores.shape[1]))
    keep = np.ones(scores.shape, dtype=bool)
    if pruned:
        order = np.argsort(scores, axis=1, kind="stable")[:, :pruned]
        np.put_along_axis(keep, order, False, axis=1)
    return keep


def sensitivity_keep_mask(scores: np.ndarray, sensitivity: float) -> np.ndarray:
    """Deep Compression's threshold: prune scores below ``sensitivity * std(scores)``."""
    return np.asarray(scores) >= sensitivity * float(np.std(scores))
