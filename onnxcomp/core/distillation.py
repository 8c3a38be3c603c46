"""Distillation of a pruned fully connected chain to the original model's outputs (pure numpy, no graph objects).

The chain: L affine layers on each sample's flattened input ``h_0 = x`` [N, K_0],
``z_l = h_{l-1} W_l^T + b_l`` (W_l [K_l, K_{l-1}], b_l [K_l]) and ``h_l = max(z_l, 0)`` where layer l has a ReLU
after it, else ``h_l = z_l``; the chain's output is ``z_L`` [N, K_L] (the pre-softmax scores of a classifier).

Objective: the mean squared error of the outputs against the original model's outputs ``t`` on the same inputs,
``E = (1/N) sum_n ||z_L(n) - t(n)||^2``. Matching the original's logits with no labels is distillation (Hinton,
Vinyals and Dean 2015, "Distilling the knowledge in a neural network": at a high temperature, matching soft targets
is matching the logits by squared error, their section 2.1); on LeNet-300-100 pruned to 35x it lowered the held-back
KL 35-50 % over the layer-wise refit alone (docs/benchmarks.md, branch callenet11, ``bench/lenet300_study.py``).

Gradients (backpropagation through the chain): ``d_L = 2 (z_L - t) / N``; ``dE/dW_l = d_l^T h_{l-1}``,
``dE/db_l = sum_n d_l``; ``d_{l-1} = (d_l W_l) * [z_{l-1} > 0]`` (ReLU's derivative, 0 at 0) or ``d_l W_l`` without a
ReLU. Only the kept weights move: each weight's gradient is multiplied by its keep mask, so a pruned weight (0 at
the start) stays exactly 0. Biases move freely unless a mask is given for them.

Optimiser: full-batch Adam (Kingma and Ba 2015, "Adam: a method for stochastic optimization", Algorithm 1):
``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``,
with b1 = 0.9, b2 = 0.999, eps = 1e-8. Stop (early stopping on held-back data): after every step the error E on the
held-back samples is computed; the parameters of the step with the lowest are kept, and the fit ends ``patience``
steps after it (or at ``max_steps``). When no step lowers the held-back error below the start's, the start is
returned unchanged. Everything is deterministic: no random choice (the caller splits the samples, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 1e-3  # Adam's step (callenet11's study: 300 steps at 1e-3 lowered the held-back error most)
MAX_STEPS = 2000
PATIENCE = 100  # steps without a new lowest held-back error before the fit stops
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8  # Kingma and Ba 2015's defaults


@dataclass
class DenseLayer:
    """One affine layer of a chain: ``weight`` [outputs, inputs], ``bias`` [outputs] (None: no bias), ``relu``: a
    ReLU follows it. ``weight_mask``/``bias_mask`` (bool, same shapes, None: all free) mark the values that may move."""

    weight: np.ndarray
    bias: np.ndarray | None
    relu: bool
    weight_mask: np.ndarray | None = None
    bias_mask: np.ndarray | None = None


@dataclass
class FitResult:
    """What ``fit`` did: the layers as fit (new arrays), the steps run and the step kept (0: the start), and the
    mean squared output error on the held-back samples at the start and at the step kept."""

    layers: list[DenseLayer]
    steps: int
    best_step: int
    start_error: float
    best_error: float


def forward(layers: list[DenseLayer], x: np.ndarray) -> list[np.ndarray]:
    """The chain's values on ``x`` [N, K_0]: ``[h_0, z_1, h_1, ..., z_L]`` (pre-activations z_l and activations h_l
    alternate; the last is the output), in ``x``'s dtype."""
    values = [x]
    h = x
    for layer in layers:
        z = h @ layer.weight.T
        if layer.bias is not None:
            z += layer.bias
        values.append(z)
        if layer.relu:
            h = np.maximum(z, 0)
            values.append(h)
        else:
            h = z
    return values


def output(layers: list[DenseLayer], x: np.ndarray) -> np.ndarray:
    """The chain's output ``z_L`` [N, K_L] on ``x`` [N, K_0]."""
    h = x
    for layer in layers:
        z = h @ layer.weight.T
        if layer.bias is not None:
            z += layer.bias
        h = np.maximum(z, 0) if layer.relu else z
    return h


def error(layers: list[DenseLayer], x: np.ndarray, target: np.ndarray) -> float:
    """``E = (1/N) sum_n ||z_L(n) - t(n)||^2``, as a float (summed in float64)."""
    difference = output(layers, x) - target
    return float(np.sum(np.square(difference, dtype=np.float64)) / max(len(x), 1))


def gradients(layers: list[DenseLayer], x: np.ndarray, target: np.ndarray) -> tuple[float, list[tuple[np.ndarray, np.ndarray | None]]]:
    """E on (``x`` [N, K_0], ``target`` [N, K_L]) and its gradient per layer: (dE/dW [outputs, inputs], dE/db
    [outputs] or None), by backpropagation (module docstring), masks not applied."""
    values = forward(layers, x)
    n = max(len(x), 1)
    difference = values[-1] - target
    loss = float(np.sum(np.square(difference, dtype=np.float64)) / n)
    delta = difference * (2.0 / n)
    grads: list[tuple[np.ndarray, np.ndarray | None]] = [None] * len(layers)  # type: ignore[list-item]
    position = len(values) - 1  # index of z_l in ``values``
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        previous = position - 1  # h_{l-1}
        h = values[previous]
        grads[index] = (delta.T @ h, delta.sum(axis=0) if layer.bias is not None else None)
        if index > 0:
            delta = delta @ layer.weight
            if layers[index - 1].relu:  # h_{l-1} = max(z_{l-1}, 0): z_{l-1} is the value before it
                delta *= values[previous - 1] > 0
                position = previous - 1
            else:
                position = previous
    return loss, grads


def fit(layers: list[DenseLayer], fit_x: np.ndarray, fit_target: np.ndarray, stop_x: np.ndarray, stop_target: np.ndarray, *,
        learning_rate: float = LEARNING_RATE, max_steps: int = MAX_STEPS, patience: int = PATIENCE,
        dtype=np.float32) -> FitResult:
    """Fit the free values of ``layers`` to ``fit_target`` on ``fit_x`` by full-batch Adam, stopped on the error on
    (``stop_x``, ``stop_target``) (module docstring). Inputs are [N, K_0] and targets [N, K_L]; the work is done in
    ``dtype`` (float32: about 25 % faster than float64 on LeNet-300-100, the same held-back error to 7 digits); the
    returned layers are new ``dtype`` arrays (the given ones are not modified)."""
    fit_x, fit_target = np.asarray(fit_x, dtype), np.asarray(fit_target, dtype)
    stop_x, stop_target = np.asarray(stop_x, dtype), np.asarray(stop_target, dtype)
    current = [DenseLayer(np.array(layer.weight, dtype), None if layer.bias is None else np.array(layer.bias, dtype),
                          layer.relu, layer.weight_mask, layer.bias_mask) for layer in layers]
    masks = []
    for layer in current:
        masks.append(None if layer.weight_mask is None else np.asarray(layer.weight_mask, bool).astype(dtype))
        masks.append(None if layer.bias is None or layer.bias_mask is None else np.asarray(layer.bias_mask, bool).astype(dtype))
    for layer, weight_mask in zip(current, masks[0::2]):  # a masked value starts (and stays) at exactly 0
        if weight_mask is not None:
            layer.weight *= weight_mask
    for layer, bias_mask in zip(current, masks[1::2]):
        if bias_mask is not None:
            layer.bias *= bias_mask
    params = [p for layer in current for p in (layer.weight, layer.bias)]
    first = [m.shape for m in params if m is not None]
    moments = [None if p is None else np.zeros_like(p) for p in params]
    squares = [None if p is None else np.zeros_like(p) for p in params]
    start = best = error(current, stop_x, stop_target)
    kept = [None if p is None else p.copy() for p in params]
    best_step = steps = 0
    for step in range(1, max_steps + 1):
        _, grads = gradients(current, fit_x, fit_target)
        flat = [g for pair in grads for g in pair]
        correction1, correction2 = 1.0 - BETA1 ** step, 1.0 - BETA2 ** step
        for p, g, m, v, mask in zip(params, flat, moments, squares, masks):
            if p is None:
                continue
            if mask is not None:
                g *= mask
            m *= BETA1
            m += (1.0 - BETA1) * g
            v *= BETA2
            v += (1.0 - BETA2) * np.square(g)
            p -= learning_rate * (m / correction1) / (np.sqrt(v / correction2) + EPSILON)
        steps = step
        now = error(current, stop_x, stop_target)
        if now < best:
            best, best_step = now, step
            kept = [None if p is None else p.copy() for p in params]
        elif step - best_step >= patience:
            break
    assert [p.shape for p in kept if p is not None] == first
    result = [DenseLayer(kept[2 * i], kept[2 * i + 1], layer.relu, layer.weight_mask, layer.bias_mask)
              for i, layer in enumerate(current)]
    return FitResult(result, steps, best_step, start, best)
