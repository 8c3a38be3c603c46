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

Cost (branch fitspeed): each step is one forward and backward pass over the fit samples and one forward pass over
the held-back ones, on one BLAS thread (FIT_THREADS). ``fit`` leaves out the first layer's input columns that cannot
matter (zero in every sample, or read by no kept weight: their gradients are exactly 0, so Adam never moves them);
``fit_shared`` computes the first layer's product by codebook entry once (LookupProducts), so a step does not
multiply by the decoded first layer. Both are the same fit as before to rounding (tests compare them with the
plain computation in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 1e-3  # Adam's step (callenet11's study: 300 steps at 1e-3 lowered the held-back error most)
MAX_STEPS = 2000
PATIENCE = 100  # steps without a new lowest held-back error before the fit stops
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8  # Kingma and Ba 2015's defaults
# BLAS threads during a fit: its products are small (LeNet-300-100: [2,250, 784] x [784, 300]), and on cores busy with
# other work two threads waiting on each other made a step about 8x slower than on the idle machine (branch fitspeed:
# 280 ms a step at load 3 against 33-40 ms at load 1.3-1.9); one thread costs less CPU a step, and the fit's rounding
# no longer depends on how many cores the machine has.
FIT_THREADS = 1


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


def forward(layers: list[DenseLayer], x: np.ndarray, first: np.ndarray | None = None) -> list[np.ndarray]:
    """The chain's values on ``x`` [N, K_0]: ``[h_0, z_1, h_1, ..., z_L]`` (pre-activations z_l and activations h_l
    alternate; the last is the output), in ``x``'s dtype. ``first`` [N, K_1], when given, is the first layer's
    product ``x W_1^T`` computed by the caller (LookupProducts), used in place of the matrix product (it is modified)."""
    values = [x]
    h = x
    for index, layer in enumerate(layers):
        z = first if index == 0 and first is not None else h @ layer.weight.T
        if layer.bias is not None:
            z += layer.bias
        values.append(z)
        if layer.relu:
            h = np.maximum(z, 0)
            values.append(h)
        else:
            h = z
    return values


def output(layers: list[DenseLayer], x: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """The chain's output ``z_L`` [N, K_L] on ``x`` [N, K_0] (``first``: as in ``forward``)."""
    h = x
    for index, layer in enumerate(layers):
        z = first if index == 0 and first is not None else h @ layer.weight.T
        if layer.bias is not None:
            z += layer.bias
        h = np.maximum(z, 0) if layer.relu else z
    return h


def error(layers: list[DenseLayer], x: np.ndarray, target: np.ndarray, first: np.ndarray | None = None) -> float:
    """``E = (1/N) sum_n ||z_L(n) - t(n)||^2``, as a float (summed in float64; ``first``: as in ``forward``)."""
    difference = output(layers, x, first) - target
    return float(np.sum(np.square(difference, dtype=np.float64)) / max(len(x), 1))


def gradients(layers: list[DenseLayer], x: np.ndarray, target: np.ndarray, first: np.ndarray | None = None
              ) -> tuple[float, list[tuple[np.ndarray, np.ndarray | None]]]:
    """E on (``x`` [N, K_0], ``target`` [N, K_L]) and its gradient per layer: (dE/dW [outputs, inputs], dE/db
    [outputs] or None), by backpropagation (module docstring), masks not applied. With ``first`` (the first layer's
    product ``x W_1^T``, as in ``forward``), the first layer's dE/dW is not computed: its place holds dE/dz_1 [N, K_1]
    (LookupProducts.gradients turns it into the codebook's gradient)."""
    values = forward(layers, x, first)
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
        grads[index] = (delta if index == 0 and first is not None else delta.T @ h,
                        delta.sum(axis=0) if layer.bias is not None else None)
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
    # The first layer's input columns that cannot matter (zero in every sample, fit and held back, or read by no kept
    # weight) are left out of the products: their weights' gradients are exactly 0, so Adam never moves them
    # (m = v = 0, a zero step), and they are put back as they started. The same fit on fewer multiply-adds
    # (MNIST: 657 of 784 pixels are nonzero in 4,000 digits; pruning by activation drops more).
    whole = current[0].weight
    columns = np.any(fit_x != 0, axis=0) | np.any(stop_x != 0, axis=0)
    if masks[0] is not None:
        columns &= masks[0].any(axis=0)
    columns = np.flatnonzero(columns)
    narrowed = len(columns) < whole.shape[1]
    if narrowed:
        current[0].weight = np.ascontiguousarray(whole[:, columns])
        masks[0] = None if masks[0] is None else np.ascontiguousarray(masks[0][:, columns])
        fit_x, stop_x = np.ascontiguousarray(fit_x[:, columns]), np.ascontiguousarray(stop_x[:, columns])
    params = [p for layer in current for p in (layer.weight, layer.bias)]

    def gradient() -> list[np.ndarray | None]:
        return [g for pair in gradients(current, fit_x, fit_target)[1] for g in pair]

    kept, steps, best_step, start, best = adam(params, masks, gradient, lambda: error(current, stop_x, stop_target),
                                               learning_rate=learning_rate, max_steps=max_steps, patience=patience)
    if narrowed:
        restored = whole.copy()
        restored[:, columns] = kept[0]
        kept[0] = restored
    result = [DenseLayer(kept[2 * i], kept[2 * i + 1], layer.relu, layer.weight_mask, layer.bias_mask)
              for i, layer in enumerate(current)]
    return FitResult(result, steps, best_step, start, best)


def adam(params: list[np.ndarray | None], masks: list[np.ndarray | None], gradient, held_error, *, learning_rate: float,
         max_steps: int, patience: int) -> tuple[list[np.ndarray | None], int, int, float, float]:
    """Full-batch Adam with early stopping (module docstring) on ``params`` (arrays changed in place; None: absent).

    ``gradient()`` returns dE/dp on the fit samples for each entry of ``params`` (None where it is None), at their
    current values; it may modify the arrays it returns. ``masks`` (per entry, 0/1 arrays of its shape, or None)
    multiply each gradient, so a value whose mask is 0 never moves. ``held_error()`` is the error on the held-back
    samples at the current values; it is called once before the first step and once after every step (a caller
    whose parameters are decoded into other arrays decodes there). Returns (copies of the parameters at the step
    with the lowest held-back error, the start's when none is lower; the steps run; that step, 0 for the start; the
    held-back error at the start; at that step)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=FIT_THREADS, user_api="blas"):
        return _adam(params, masks, gradient, held_error, learning_rate=learning_rate, max_steps=max_steps,
                     patience=patience)


def _adam(params, masks, gradient, held_error, *, learning_rate: float, max_steps: int, patience: int):
    """``adam``'s loop (under its thread limit)."""
    first = [p.shape for p in params if p is not None]
    moments = [None if p is None else np.zeros_like(p) for p in params]
    squares = [None if p is None else np.zeros_like(p) for p in params]
    start = best = held_error()
    kept = [None if p is None else p.copy() for p in params]
    best_step = steps = 0
    for step in range(1, max_steps + 1):
        flat = gradient()
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
        now = held_error()
        if now < best:
            best, best_step = now, step
            kept = [None if p is None else p.copy() for p in params]
        elif step - best_step >= patience:
            break
    assert [p.shape for p in kept if p is not None] == first
    return kept, steps, best_step, start, best


@dataclass
class SharedValues:
    """A tensor stored as a codebook lookup (a record's contents, in the orientation the chain reads it):
    ``value[i] = codebook[indices[i]] * scales[i]`` (``scales`` None: 1), then ``value.flat[positions] = values``
    (the outliers, exact). ``indices`` int [any shape], ``codebook`` [K], ``positions`` int [M] (row-major flat
    positions in ``indices``' shape), ``values`` [M], ``scales`` [indices' shape] or None; ``fixed`` bool [K] (None:
    none) marks the entries that do not move (the pruned 0.0, which sparse coding needs exactly 0)."""

    codebook: np.ndarray
    indices: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    scales: np.ndarray | None = None
    fixed: np.ndarray | None = None

    def decoded(self, dtype=np.float32) -> np.ndarray:
        """The tensor, [indices' shape] in ``dtype``."""
        value = np.asarray(self.codebook, dtype)[self.indices]
        if self.scales is not None:
            value *= self.scales
        value.flat[self.positions] = self.values
        return value

    def gradients(self, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dE/dcodebook [K], dE/dvalues [M]) from dE/dvalue ``grad`` [indices' shape] by the chain rule: an entry's
        gradient is the sum of the gradients of the values that look it up, each times its scale (Han, Mao and Dally
        2016, "Deep Compression", section 3.3, equation 3: the centroid fine-tuning step); an outlier takes its own
        value's gradient and adds nothing to its index's entry (the reader never looks that index up). The sums run
        in float64 (numpy.bincount), in the elements' order: deterministic."""
        outliers = np.asarray(grad).reshape(-1)[self.positions].astype(grad.dtype)
        through = grad * self.scales if self.scales is not None else grad.copy()
        through.flat[self.positions] = 0
        sums = np.bincount(self.indices.reshape(-1), weights=through.reshape(-1), minlength=len(self.codebook))
        return sums.astype(grad.dtype), outliers


LOOKUP_BYTES = 256 << 20  # at most this many bytes of LookupProducts' products (both sample sets); else the plain path


class LookupProducts:
    """The first layer's product ``x W^T`` [N, outputs] for a weight stored as a codebook lookup (SharedValues), by
    entry: ``x W^T = sum_k c_k (x A_k^T) + x O^T``, where A_k [outputs, inputs] holds the scales (1 unscaled) of the
    values that look entry k up, 0 elsewhere (an outlier looks nothing up), and O the outliers' values at their
    positions. The first layer's input never changes during a fit, so the products ``P_k = x A_k^T`` are computed
    once (sparse: N multiply-adds a looked-up value), and then each step's product is K scaled sums of [N, outputs]
    arrays and the entries' gradients K inner products,
    ``dE/dc_k = sum_{n,i} dE/dz[n,i] P_k[n,i] = sum_{(i,j): A_k[i,j] != 0} (dE/dW)[i,j] A_k[i,j]``,
    the sum over the values that look entry k up of their gradients times their scales (SharedValues.gradients,
    Deep Compression's centroid gradient) in another order; an outlier's gradient is ``sum_n dE/dz[n,i] x[n,j]``.
    This replaces the two [N, inputs] x [inputs, outputs] products of the dense path (forward and dE/dW) a step.
    Entries held fixed at exactly 0 (the pruned +0.0) add nothing, get no product, and their gradient is given as 0
    (they never move)."""

    def __init__(self, shared: SharedValues, x: np.ndarray, dtype=np.float32) -> None:
        from scipy import sparse
        outputs, inputs = shared.indices.shape
        self.size = len(shared.codebook)
        self.entries = self.moving(shared)
        looked_up = np.ones(outputs * inputs, bool)
        looked_up[shared.positions] = False
        indices = np.asarray(shared.indices).reshape(-1)
        scales = None if shared.scales is None else np.asarray(shared.scales, np.float64).reshape(-1)
        transposed = np.ascontiguousarray(np.asarray(x, np.float64).T)  # [inputs, N]
        self.products = np.empty((len(self.entries), len(x), outputs), dtype)
        for slot, entry in enumerate(self.entries):
            where = np.flatnonzero(looked_up & (indices == entry))
            lookup = sparse.csr_matrix((np.ones(len(where)) if scales is None else scales[where],
                                        (where // inputs, where % inputs)), shape=(outputs, inputs))
            self.products[slot] = (lookup @ transposed).T
        self.flat_products = self.products.reshape(len(self.entries), -1)
        # outliers grouped by output row (stable, so each row's sum runs in the outliers' order)
        positions = np.asarray(shared.positions, np.int64)
        self.outlier_rows, outlier_columns = np.divmod(positions, inputs)
        self.order = np.argsort(self.outlier_rows, kind="stable")
        rows = self.outlier_rows[self.order]
        self.row_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
        self.rows = rows[self.row_starts]
        self.outlier_inputs = np.ascontiguousarray(np.asarray(x, dtype)[:, outlier_columns])  # [N, M]

    @staticmethod
    def moving(shared: SharedValues) -> np.ndarray:
        """The entries that get a product: all but those held fixed at exactly 0."""
        codebook = np.asarray(shared.codebook, np.float64)
        fixed = np.zeros(len(codebook), bool) if shared.fixed is None else np.asarray(shared.fixed, bool)
        return np.flatnonzero(~(fixed & (codebook == 0)))

    @staticmethod
    def fits(shared: SharedValues, samples: int, dtype=np.float32) -> bool:
        """Whether the products of ``samples`` samples stay within LOOKUP_BYTES."""
        size = len(LookupProducts.moving(shared)) * samples * shared.indices.shape[0] * np.dtype(dtype).itemsize
        return size <= LOOKUP_BYTES

    def product(self, codebook: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``x W^T`` [N, outputs] at the codebook ``codebook`` [K] and outlier values ``values`` [M] (a new array)."""
        z = (np.asarray(codebook, self.products.dtype)[self.entries] @ self.flat_products).reshape(self.products.shape[1:])
        if len(self.rows):
            z[:, self.rows] += np.add.reduceat((self.outlier_inputs * values)[:, self.order], self.row_starts, axis=1)
        return z

    def gradients(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dE/dcodebook [K], dE/dvalues [M]) from ``delta`` = dE/dz [N, outputs] (class docstring)."""
        grad = np.zeros(self.size, delta.dtype)
        grad[self.entries] = self.flat_products @ delta.reshape(-1)
        return grad, np.einsum("nm,nm->m", delta[:, self.outlier_rows], self.outlier_inputs)


@dataclass
class SharedFitResult:
    """What ``fit_shared`` did: per layer the tuned weight and bias (SharedValues with new codebooks and outlier
    values, indices and positions the given ones; or a float array for a float bias; None where the layer has none
    or it was held fixed), the steps run, the step kept (0: the start) and the held-back error at the start and at
    that step."""

    weights: list[SharedValues | None]
    biases: list[SharedValues | np.ndarray | None]
    steps: int
    best_step: int
    start_error: float
    best_error: float


def fit_shared(layers: list[DenseLayer], weights: list[SharedValues | None], biases: list[SharedValues | None],
               fit_x: np.ndarray, fit_target: np.ndarray, stop_x: np.ndarray, stop_target: np.ndarray, *,
               learning_rate: float = LEARNING_RATE, max_steps: int = MAX_STEPS, patience: int = PATIENCE,
               dtype=np.float32) -> SharedFitResult:
    """Fine-tune the codebooks of a shared chain to ``fit_target`` on ``fit_x`` by the same full-batch Adam and
    early stopping as ``fit`` (module docstring). Layer l's weight [outputs, inputs] is ``weights[l]`` decoded (its
    codebook entries not ``fixed`` and its outlier values move; indices, positions and scales do not), or, where
    ``weights[l]`` is None, ``layers[l].weight`` held fixed; its bias is ``biases[l]`` decoded (the same), or, where
    None, ``layers[l].bias`` moving freely (under ``layers[l].bias_mask``). The given arrays are not modified."""
    fit_x, fit_target = np.asarray(fit_x, dtype), np.asarray(fit_target, dtype)
    stop_x, stop_target = np.asarray(stop_x, dtype), np.asarray(stop_target, dtype)
    coded = [item for pair in zip(weights, biases) for item in pair]  # weight, bias of each layer
    tuned = [None if item is None else SharedValues(np.array(item.codebook, dtype), item.indices, item.positions,
                                                      np.array(item.values, dtype),
                                                      None if item.scales is None else np.asarray(item.scales, dtype),
                                                      item.fixed) for item in coded]
    current = [DenseLayer(np.array(layer.weight, dtype), None if layer.bias is None else np.array(layer.bias, dtype),
                          layer.relu) for layer in layers]
    params, masks = [], []
    for index, item in enumerate(tuned):
        layer = current[index // 2]
        if item is not None:
            params += [item.codebook, item.values]
            masks += [None if item.fixed is None else (~np.asarray(item.fixed, bool)).astype(dtype), None]
        elif index % 2 and layer.bias is not None:  # a float bias moves
            bias_mask = layers[index // 2].bias_mask
            params += [layer.bias, None]
            masks += [None if bias_mask is None else np.asarray(bias_mask, bool).astype(dtype), None]
        else:
            params += [None, None]
            masks += [None, None]

    # the first layer's weight as a lookup: its products by entry once, on each sample set (LookupProducts)
    lookups = None
    if tuned[0] is not None and LookupProducts.fits(tuned[0], len(fit_x) + len(stop_x), dtype):
        lookups = LookupProducts(tuned[0], fit_x, dtype), LookupProducts(tuned[0], stop_x, dtype)

    def first(samples: int) -> np.ndarray | None:
        return None if lookups is None else lookups[samples].product(tuned[0].codebook, tuned[0].values)

    def decode() -> None:
        for index, item in enumerate(tuned):
            if item is not None and (index or lookups is None):
                value = item.decoded(dtype)
                if index % 2:
                    current[index // 2].bias = value.reshape(-1)
                else:
                    current[index // 2].weight = value

    def gradient() -> list[np.ndarray | None]:
        _, grads = gradients(current, fit_x, fit_target, first(0))
        flat = []
        for index, item in enumerate(tuned):
            grad = grads[index // 2][index % 2]
            if index == 0 and lookups is not None:
                flat += list(lookups[0].gradients(grad))  # grad is dE/dz_1 here
            elif item is not None:
                flat += list(item.gradients(grad.reshape(item.indices.shape)))
            else:
                flat += [grad if params[len(flat)] is not None else None, None]
        return flat

    def held_error() -> float:
        decode()
        return error(current, stop_x, stop_target, first(1))

    kept, steps, best_step, start, best = adam(params, masks, gradient, held_error, learning_rate=learning_rate,
                                               max_steps=max_steps, patience=patience)
    results: list = []
    for index, item in enumerate(tuned):
        if item is not None:
            results.append(SharedValues(kept[2 * index], item.indices, item.positions, kept[2 * index + 1], item.scales,
                                        item.fixed))
        else:
            results.append(kept[2 * index])
    return SharedFitResult(results[0::2], results[1::2], steps, best_step, start, best)
