"""Pruning: which weights to set to zero, from a score per weight (numpy only).

A score function maps a weight tensor (and, for activation-aware scores, its layer's calibration
statistics) to a non-negative score per weight; the lowest-scoring fraction ``s`` is pruned. Magnitude
pruning (Deep Compression's) uses ``score = |w|``. ``scope="layer"`` prunes the fraction s of every layer;
``scope="global"`` ranks all layers' scores together against one threshold. Ties are broken by position so
that the result is deterministic.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ScoreFunction = Callable[[np.ndarray], np.ndarray]


def magnitude_score(weight: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(weight, dtype=np.float32))


SCORES: dict[str, ScoreFunction] = {"magnitude": magnitude_score}


def keep_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """True for the weights kept when the ``sparsity`` fraction with the lowest scores is pruned."""
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
