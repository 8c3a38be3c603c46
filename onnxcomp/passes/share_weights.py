"""ShareWeightsPass: per-layer k-means codebooks (see onnxcomp/core/codebook.py for the math).

Each target gets a codebook of at most 2^bits float32 values (or of at most K, a per-weight codebook size between
two bit widths, ``codebook_size_override``: a budget allocation's setting) and one index per weight; pruned weights
map to index 0, whose value is exactly 0.0. ``bits`` is an int or a mapping from weight kind ("conv", "fc",
"embedding") to an int in 1..16; ``rules`` (onnxcomp.recipes.LayerRule) set the bits of the weights whose
names they match. With ``refit_codebook`` and calibration statistics, the shared values are
then refit by least squares against the dense layer's outputs (onnxcomp/reconstruction.py); with
``rounding="obs"`` (the default) the weights are first rounded to the codebook in input order, each rounding
error compensated in the inputs not yet rounded (onnxcomp/obs.py), instead of each to its nearest entry. ``encode``, if
given, is called on each target as soon as it is shared (the custom-op pipeline encodes its record there and
drops the indices), so only one weight's arrays are alive at a time.

A Conv filter the allocation gave a channel-scaled alternative (``scaled_alternative``, onnxcomp/core/allocation.py)
is also divided by its per-output-channel scales (codebook.channel_scales) and its normalised values shared; that
codebook is kept when it passes the channel checks against k-means and is the smallest (_uniform_or_kmeans). The
record then stores the scales (record versions 3 and 4); its outliers keep the weight's own values, unscaled.

``outliers`` ("auto", the default, or a fraction of the kept weights; rules may set it per layer) keeps the
largest weights exact beside the codebook (onnxcomp/core/outliers.py: the rule that picks the fraction per
tensor). Compensated rounding and the codebook refit treat them as fixed: an outlier stores its compensated
value and no codebook entry is fit to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import numpy as np
import onnx

from onnxcomp.core import codebook as codebook_math
from onnxcomp.core.native import digest
from onnxcomp.core import obs
from onnxcomp.core import outliers as outlier_math
from onnxcomp import parallel, progress
from onnxcomp.core import reconstruction
from onnxcomp.passes.calibration import from_rows, to_rows
from onnxcomp.errors import InvalidOptionError
from onnxcomp.core.recipes import LayerRule, rule_value

from .base import CompressionState, ExternalValues, GraphPass, PassResult, log, to_element_type
from .select_weights import drop_non_finite, non_finite_reason


ROUNDINGS = ("obs", "nearest")
PARALLEL_CODEBOOKS = 1 << 20  # weights from this many values share their alternative codebooks on the cores at once
PARALLEL_REFIT_BYTES = 64 << 20
FINISHED = "finished"  # cache keys (FINISHED, weight name): a weight's last finished result (_keep, _reuse)
# With calibration data (ShareWeightsPass(matched_uniform=True), set by compress and the budget's trials when --calib
# is given and this is True): each k-means codebook is replaced by the uniform one of fewest values that matches its
# error, when that one's record is smaller (_matched_uniform). Off by default (branch cal11a): it lowers a layer's
# output error in 1-3 % fewer bytes on MiniLM-L3's weights, but no calibrated zoo run with it finished, and on the
# tiny MLP of tests/test_budget.py two budget runs' first check-set allocation then missed (20 check samples).
MATCHED_UNIFORM = os.environ.get("ONNXCOMP_MATCHED_UNIFORM", "") == "1"  # ONNXCOMP_MATCHED_UNIFORM=1 switches it on
MAX_LEVELS = 255  # uniform codebooks tried up to this many values: one-byte indices, as k-means's at 8 bits
MATCHED_DAMAGE = 1.0  # the uniform codebook's worst channel's error may be at most this times k-means's
MATCHED_GAIN = 0.01  # a uniform codebook replaces k-means only when its estimated record is this fraction smaller (the
# estimate is the indices' entropy; the written Huffman or gap code differs from it by about as much)
REUSE = True  # with a cache: a weight whose values, mask and settings are unchanged takes its last result (False: shared again)  # calibrated refits run on parallel threads while every weight's fp32 bytes are at most this


class ShareWeightsPass(GraphPass):
    def __init__(self, *, bits: int | Mapping[str, int] = 5, init: str = "quantile", seed: int = 0,
                 refit_codebook: bool = False, rounding: str = "obs", rules: tuple[LayerRule, ...] = (), encode=None,
                 outliers: str | float = outlier_math.AUTO, outliers_opset: int = 0, cache: dict | None = None,
                 matched_uniform: bool = False) -> None:
        for value in bits.values() if isinstance(bits, Mapping) else [bits]:
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise InvalidOptionError(f"bits {value} is out of range: give an integer from 1 to 16")
        if init not in codebook_math.INITS:
            raise InvalidOptionError(f"unknown codebook initialisation {init!r}: use {', '.join(codebook_math.INITS)}")
        if rounding not in ROUNDINGS:
            raise InvalidOptionError(f"unknown rounding {rounding!r}: use one of {', '.join(ROUNDINGS)}")
        self.bits, self.init, self.seed, self.refit_codebook = bits, init, seed, refit_codebook
        self.rounding = rounding
        self.outliers = outlier_math.parse_option(outliers)
        self.outliers_opset = outliers_opset  # the portable format scatters outliers with opset-11 ops
        self.rules = tuple(rules)
        self.encode = encode
        self.cache = cache
        self.reuse = REUSE
        self.matched_uniform = matched_uniform

    def bits_for(self, target) -> int:
        """Index bits: a per-weight override (budget allocation), a layer rule matching the name, else the kind's."""
        if target.bits_override is not None:
            return target.bits_override
        if (value := rule_value(self.rules, target.name, "bits")) is not None:
            return value
        return self.bits[target.kind] if isinstance(self.bits, Mapping) else self.bits

    def outliers_for(self, target) -> str | float:
        """Outlier option: a per-weight override (the data-free allocation), a layer rule matching the name, else the pass's."""
        if target.outliers_override is not None:
            return target.outliers_override
        value = rule_value(self.rules, target.name, "outliers")
        return self.outliers if value is None else outlier_math.parse_option(value)

    def sharer(self, state: CompressionState, log_opset: bool = True):
        """The function that shares one target (its codebook, indices, outliers; its record through ``encode``) on
        the calling thread and returns the reason its values are not finite, or None: weights are independent, so
        it runs on worker threads (run; AllocateShareWeightsPass)."""
        opset = (state.graph.opset or 0) if state.graph is not None else self.outliers_opset
        no_outliers = opset < self.outliers_opset
        if no_outliers and log_opset:
            log.info("no outliers: the model's opset %d has no ScatterElements/CumSum (needs %d) for the portable format",
                     opset, self.outliers_opset)

        def share(target, values=None) -> str | None:  # values: target.values when the caller has read them
            values = target.values if values is None else values
            if not target.checked:  # a streamed weight no earlier pass read: its one read is here
                reason = non_finite_reason(values)
                if reason:
                    return reason
                target.checked = True
            target.bits = self.bits_for(target)
            layout = target.layer_input.layout if target.layer_input is not None else None
            statistics = target.statistics
            importance = None if statistics is None else statistics.sum_squares
            prepared = self._prepared(target, values, importance)  # the sorted kept values, channel norms (see below)
            # the calibrated refit fits one codebook to the layer's outputs: no channel scales there
            axis = None if self.refit_codebook and statistics is not None else scale_axis(target)
            option = 0.0 if no_outliers else self.outliers_for(target)
            scaled = target.scaled_alternative if axis is not None and target.alternative is not None else None
            compared = target.alternative is not None and (target.levels_override or scaled is not None)
            # everything the result below depends on besides the values and mask (which _prepared's key holds)
            size = target.codebook_size_override
            settings = (target.bits, option, self.init, self.seed, target.levels_override, target.alternative, scaled,
                        axis, target.dtype, self.encode is not None, self.matched_uniform, size)
            if statistics is None and self._reuse(target, self._entry_key(target, prepared), settings):
                return None
            # The codebooks tried on this weight are independent (the prepared arrays are only read once made):
            # on a large weight they run on the cores at once, results taken in the same order (same bytes).
            jobs = [lambda: outlier_math.share(values, target.keep, target.bits, option=option, init=self.init, seed=self.seed,
                                               levels=target.levels_override, rows=output_rows(target),
                                               importance=importance, prepared=prepared, codebook_size=size)]
            if compared and scaled is not None:
                levels, fraction = scaled
                bits = int(np.ceil(np.log2(levels + 1)))
                jobs.append(lambda: self._share_scaled(target, values, bits, 0.0 if no_outliers else fraction, levels, axis,
                                                       importance))
            if compared and target.levels_override:  # k-means is the fallback the others are measured against
                jobs.append(lambda: self._kmeans(target, values, 0.0 if no_outliers else None, importance, prepared))
            done = []
            # (not with calibration statistics: one codebook at a time bounds the per-weight working memory there)
            if len(jobs) > 1 and target.size >= PARALLEL_CODEBOOKS and statistics is None:
                if "ordered" not in prepared:  # the first one sorts the weight for the others (an earlier round's cache)
                    done.append(jobs[0]())
                done += parallel.ordered_map(lambda job: job(), jobs[len(done):])
            else:
                done = [job() for job in jobs]
            shared, scales = done[0], None
            if compared:
                choices = [(shared, scales, target.bits, target.levels_override)] if target.levels_override else []
                if scaled is not None:
                    choices.append((*done[1], bits, levels))
                shared, scales = self._uniform_or_kmeans(target, choices, done[-1] if target.levels_override else shared)
            elif self.matched_uniform and not target.levels_override and (importance is not None or target.kind == "embedding"):
                shared = self._matched_uniform(target, values, shared, importance, prepared, target.kind == "conv")
            key = self._entry_key(target, prepared) if statistics is None else None
            del prepared
            target.scales, target.scale_axis = (scales, axis) if scales is not None else (None, 0)
            target.codebook, target.indices = shared.codebook, shared.indices
            target.outlier_positions, target.outlier_values = shared.positions, shared.values
            if self.refit_codebook and statistics is not None and (statistics.dense_gram is not None or statistics.activations is not None):
                self._refit(target, layout, statistics, values)
            # A float16/bfloat16 weight is decoded to float32 and cast back: its codebook and outliers hold values of
            # its type, so every path (decode + Cast, a fused kernel after Cast, the portable lookup) computes the same.
            target.codebook = to_element_type(target.codebook, target.dtype)
            target.outlier_values = to_element_type(target.outlier_values, target.dtype)
            del values
            if self.encode is not None:
                self.encode(target)
            self._keep(target, key, settings)
            return None

        return share

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is None]
        share = self.sharer(state, bool(targets))
        # Weights are independent: each is shared (and encoded) on its own thread, results taken in order, so the
        # output is the same as one thread's. With calibration refits, every numeric step of a weight runs on one
        # BLAS thread (compensated rounding and the codebook refit already did; the layer's inverse factor and
        # error sums too, under one process-wide limit for the whole pass: threadpoolctl's limits are
        # process-wide, so per-step limits entered and left on two threads would restore two BLAS threads under
        # the other's solves), and only while no weight is larger than PARALLEL_REFIT_BYTES (two weights' inverse
        # factors and normal equations in memory at once) and none streams from external data (that path holds
        # one weight at a time: tests/test_scale.py bounds its peak).
        calibrated = self.refit_codebook and any(t.statistics is not None for t in targets)
        workers = None
        if calibrated and (len(targets) < 2 or parallel.default_workers() < 2
                           or max(t.size for t in targets) * 4 > PARALLEL_REFIT_BYTES
                           or any(isinstance(getattr(t.constant, "_values", None), ExternalValues) for t in targets)):
            workers = 1
        limit = contextlib.nullcontext()
        if calibrated and workers is None:
            import scipy.linalg  # noqa: F401  (threadpoolctl limits only the libraries already loaded)
            from threadpoolctl import threadpool_limits
            limit = threadpool_limits(limits=1, user_api="blas")
        # Largest first, each started as soon as a worker is free (longest-processing-time-first: a long weight no
        # longer waits for the one before it to be taken, nor keeps the next from starting); the results are taken
        # in the targets' order, so nothing written depends on which finished first.
        by_size = sorted(range(len(targets)), key=lambda i: -targets[i].size)
        with limit:
            finished = dict(progress.track(parallel.completed_map(lambda i: share(targets[i]), by_size, workers),
                                           "k-means codebooks", total=len(targets)))
        for i, target in enumerate(targets):
            if finished[i]:
                drop_non_finite(state, target, finished[i])
        return PassResult(bool(targets), f"shared {len(targets)} tensors")

    def _prepared(self, target, values, importance) -> dict:
        """The ``prepared`` dict of outliers.share for this weight (its sorted kept values, channel norms and
        largest-magnitude positions, computed once for every codebook tried on it). With ``cache`` (compress's
        rounds on the same input, no calibration) it is kept between passes under the weight's name while the
        weight's values and pruning mask are the same (same shape, dtype and core.native.digest of their bytes), so a
        later round does not sort the weight again; the arrays in it are never written to, so the result is the same
        byte for byte (tests/test_fast_paths.py). Not with importance (calibration statistics) or a refit weight."""
        if self.cache is None or importance is not None or target.refit is not None:
            return {}
        values = np.ascontiguousarray(values)
        keep = None if target.keep is None else np.ascontiguousarray(target.keep, dtype=bool)
        key = (values.shape, values.dtype.str, digest(values), None if keep is None else digest(keep))
        entry = self.cache.get(target.name)
        if entry is not None and entry[0] == key:
            return entry[1]
        prepared = {}
        self.cache[target.name] = (key, prepared)
        return prepared

    def _entry_key(self, target, prepared: dict):
        """The cache's key of ``target``'s values and pruning mask when ``prepared`` is the cache's entry for them
        (_prepared), else None: only then do they identify the weight's result."""
        entry = self.cache.get(target.name) if self.cache is not None and self.reuse else None
        return entry[0] if entry is not None and entry[1] is prepared else None

    def _reuse(self, target, key, settings: tuple) -> bool:
        """Give ``target`` the finished result (codebook, indices, outliers, scales, bits, record) an earlier pass with
        this ``cache`` computed for it, when its values and pruning mask (``key``, _entry_key) and every setting the
        result depends on (``settings``) are the same: sharing is deterministic, so it would compute the same again
        (tests/test_fast_paths.py compares the bytes). compress's targeted back-off rounds change a few weights'
        limits and keep the rest. Returns whether it did."""
        finished = self.cache.get((FINISHED, target.name)) if key is not None else None
        if finished is None or finished[0] != key or finished[1] != settings:
            return False
        kept = finished[2]
        target.bits, target.levels_override = kept["bits"], kept["levels"]
        target.scales = None if kept["scales"] is None else kept["scales"].copy()
        target.scale_axis = kept["scale_axis"]
        target.codebook = kept["codebook"].copy()
        target.indices = None if kept["indices"] is None else kept["indices"].astype(np.int64)  # (None: released)
        target.outlier_positions, target.outlier_values = kept["positions"].copy(), kept["values"].copy()
        if kept["record"] is not None:
            target.record, target.transposed = kept["record"], kept["transposed"]
        return True

    def _keep(self, target, key, settings: tuple) -> None:
        """Keep ``target``'s finished result for _reuse under its weight's name (one result per weight, the latest;
        the indices in the narrowest unsigned type that holds them), when ``key`` is not None (_entry_key)."""
        if key is None:
            return
        narrow = np.uint8 if len(target.codebook) <= 1 << 8 else np.uint16 if len(target.codebook) <= 1 << 16 else np.int64
        self.cache[(FINISHED, target.name)] = (key, settings, {
            "bits": target.bits, "levels": target.levels_override, "scales": target.scales,
            "scale_axis": target.scale_axis, "codebook": target.codebook,
            "indices": None if target.indices is None else target.indices.astype(narrow),
            "positions": target.outlier_positions, "values": target.outlier_values, "record": target.record,
            "transposed": target.transposed})

    def _share_scaled(self, target, values, bits: int, option, levels: int, axis: int, importance):
        """(shared, scales): the uniform codebook of ``levels`` values fit to ``values`` divided by their channel
        scales along ``axis`` (codebook.channel_scales); the outliers keep the weight's own values (a reader does
        not scale them) and the estimated bytes include the scale section. The worst channel's relative error
        (damage) is the same as on the weight itself: each output channel is divided by one number."""
        scales = codebook_math.channel_scales(values, axis)
        shared = outlier_math.share(codebook_math.normalise(values, scales, axis), target.keep, bits, option=option,
                                    init=self.init, seed=self.seed, levels=levels, rows=output_rows(target),
                                    importance=importance)
        shared.values = outlier_math.stored_values(np.asarray(values, np.float32).reshape(-1)[shared.positions])
        shared.estimated_bytes += 10 + 2 * len(scales)
        return shared, scales

    def _kmeans(self, target, values, outliers: float | None, importance, prepared: dict | None = None):
        """The k-means share of ``target.alternative`` (bits, outlier fraction; ``outliers`` overrides the fraction)
        that _uniform_or_kmeans measures the other codebooks against."""
        bits, fraction = target.alternative
        return outlier_math.share(values, target.keep, bits, option=fraction if outliers is None else outliers,
                                  init=self.init, seed=self.seed, rows=output_rows(target), importance=importance,
                                  prepared=prepared)

    def _matched_uniform(self, target, values, kmeans, importance, prepared: dict, channels: bool = True):
        """The uniform codebook (codebook.fit_sorted with ``levels``) of the fewest values whose error matches
        ``kmeans`` (the k-means share at ``target.bits``), when its estimated record is smaller; else ``kmeans``.
        The error is SharedWeight.error, the squared error summed with the inputs' energies as weights (with
        calibration statistics ``importance`` = diag(X^T X), so it is the diagonal part of the layer's output error
        ||X (W - Q)||^2; 1 without). For each outlier fraction of (0, the one k-means chose) the count is bisected
        from 2 to min(MAX_LEVELS, 2^(bits + 2) - 1) (errors fall with the count, not strictly: bisection takes one
        count where the test turns, which matches by construction); the smaller record of the two is kept if it is at
        least MATCHED_GAIN smaller than k-means's. Matching also holds the worst channel's relative error (damage)
        to k-means's, as _uniform_or_kmeans does: one absolute step over channels of different sizes (a folded
        normalisation) keeps the summed error and loses a small channel. Without it silero-vad's re-parameterised
        convolutions took uniform codebooks at 6 and 8 bits that were 19-35 % smaller and 2-3x worse on the model's
        output (their sensitivity curves, docs/benchmarks.md, branch cal11a). ``channels`` (the sharer passes it for
        Conv filters only, where folded normalisations live) keeps that second test; without it only the summed
        error is matched. On MiniLM-L3's MatMuls the worst channel test rejected every uniform codebook at 4-6 bits,
        and the ones it rejected had a lower output error ||X (W - Q)||^2 on calibration activations than k-means's
        (full X, nearest and OBS rounding alike) in 1-3 % fewer bytes; a Gather table's "channels" are its rows
        (tokens, a few hundred values each): its worst row is an extreme of tens of thousands of noisy ratios, and
        on MiniLM-L3's word embedding the uniform codebook about as accurate as 4-bit k-means (23 values, 0.1 %
        outliers) moved the worst calibration sentence's cosine error from 0.00448 to 0.00396 in 2 % fewer bytes
        (docs/benchmarks.md, branch cal11a).

        Only for weights whose output error the summed error stands for: a layer with calibration statistics, or
        a Gather table (its output is the rows it reads, so the row errors are the output error, every token
        weighted alike since the calibration data sees few of them). Other weights (an LSTM's, those inside If
        branches, which no statistics reach) keep k-means: on silero-vad their uniform codebooks matched k-means's
        squared error and worst channel and still doubled a weight's effect on the output (its STFT basis at 4 bits),
        and the budget's first allocation then missed on the check set (docs/benchmarks.md, branch cal11a).

        Why: k-means (the fixed-rate optimum) evens out the cluster sizes, but the indices are entropy coded, and at
        a given mean squared error an entropy-coded uniform quantiser needs fewer bits (Gish and Pierce 1968: within
        0.255 bit of the rate-distortion bound at high rate); on MiniLM-L3's and ddddocr-ocr's weights 0.1-0.3
        fewer bits of index entropy per weight at 3-6 bits (docs/benchmarks.md, branch cal11a). Its tail values
        are rare, so their long codes cost little. Sets
        target.bits to the index bits of the codebook kept."""
        pruned = target.keep is not None
        top = min(MAX_LEVELS, (1 << (target.bits + 2)) - 1)
        if len(kmeans.codebook) - pruned < 3 or top < 3:
            return kmeans

        def fit(levels: int, fraction: float):
            bits = max(1, int(np.ceil(np.log2(levels + pruned))))
            return outlier_math.share(values, target.keep, bits, option=fraction, init=self.init, seed=self.seed,
                                      levels=levels, rows=output_rows(target), importance=importance, prepared=prepared)

        def matches(shared) -> bool:
            return shared.error <= kmeans.error and (not channels or shared.damage <= MATCHED_DAMAGE * kmeans.damage)

        best = kmeans
        for fraction in sorted({0.0, float(kmeans.fraction)}):
            found = fit(top, fraction)
            if not matches(found):
                continue
            low, high = 2, top  # high matches
            while low < high:
                middle = (low + high) // 2
                shared = fit(middle, fraction)
                if matches(shared):
                    high, found = middle, shared
                else:
                    low = middle + 1
            if found.estimated_bytes < best.estimated_bytes:
                best = found
        if best is kmeans or best.estimated_bytes > (1 - MATCHED_GAIN) * kmeans.estimated_bytes:
            return kmeans
        log.info("%s: uniform codebook of %d values, %d outliers (%d bytes) for k-means' %d (%d bytes) at the same error",
                 target.name, len(best.codebook) - pruned, len(best.positions), best.estimated_bytes,
                 len(kmeans.codebook) - pruned, kmeans.estimated_bytes)
        target.bits = max(1, int(np.ceil(np.log2(len(best.codebook)))))
        return best

    def _uniform_or_kmeans(self, target, choices, kmeans):
        """A uniform codebook spreads the same absolute error over every value: a weight whose output channels
        differ in scale (a folded normalisation) may keep its relative L2 error and still lose a small channel.
        Each of ``choices`` ((shared, scales, bits, levels): the allocated uniform codebook, and a channel-scaled
        one) is eligible only when its worst channel's relative error (outliers.share's damage D) is no larger than
        that of the k-means codebook it replaces (``target.alternative``; ``kmeans``, its share: _kmeans, or the
        allocation's choice itself), and its record smaller; the smallest eligible one is kept (the first on ties),
        else the k-means codebook is used. Returns (shared, scales)."""
        bits, _ = target.alternative
        eligible = [c for c in choices if c[0].damage <= kmeans.damage and c[0].estimated_bytes < kmeans.estimated_bytes]
        if eligible:
            shared, scales, target.bits, target.levels_override = min(eligible, key=lambda c: c[0].estimated_bytes)
            return shared, scales
        log.info("%s: k-means codebook kept (worst channel %.4f, %d bytes) over the uniform one%s (%s)",
                 target.name, kmeans.damage, kmeans.estimated_bytes, "s" if len(choices) > 1 else "",
                 ", ".join(f"{c[0].damage:.4f}, {c[0].estimated_bytes} bytes" for c in choices))
        target.bits, target.levels_override = bits, 0
        return kmeans, None

    def _refit(self, target, layout: str, statistics, values: np.ndarray) -> None:
        """Compensated rounding (kept where it lowers the layer's error), then the least-squares codebook refit.
        ``values`` are the target's values (the weight as read, or its refit) in its own shape."""
        exact = None
        if len(target.outlier_positions):
            mask = np.zeros(target.size, dtype=bool)
            mask[target.outlier_positions] = True
            exact = to_rows(mask.reshape(target.shape), layout)
        original = to_rows(values if target.refit is None else target.original, layout)  # one read of the weight
        low_rank = statistics.activations  # X [N, inputs] kept instead of G = X^T X (calibration.LayerStatistics)
        gram = None if low_rank is not None else statistics.gram
        if self.rounding == "obs":
            keep = None if target.keep is None else to_rows(target.keep.reshape(target.shape), layout)
            ordered = obs.act_order_for(target.keep)
            factor = obs.layer_factor(statistics, ordered=ordered)  # act-order: (U, dead, order)
            rounded = obs.round_to_codebook(to_rows(values, layout), keep, target.codebook, None, exact=exact, factor=factor,
                                            dense_values=False, order=factor[2] if ordered else None)
            del factor  # the inputs^2 factor is not needed past the rounding (unless the statistics cache it)
            rows, compensated = rounded if exact is not None else (rounded, None)
            del rounded
            if compensated is not None:  # outliers store their compensated values, as a reader gets them back
                # the rounding gives them in the rows' order: put them in the order of target.outlier_positions
                in_positions = np.empty_like(compensated)
                in_positions[np.argsort(_row_positions(target, layout), kind="stable")] = compensated
                compensated = outlier_math.stored_values(in_positions)
            nearest = to_rows(target.indices.reshape(target.shape), layout)
            candidates = [(rows, compensated), (nearest, target.outlier_values)]
            errors = []
            for indices, kept in candidates:  # decoded a row block at a time (reconstruction.decoded_errors)
                errors.append(reconstruction.decoded_errors(
                    target.codebook, indices, original, gram, statistics.cross, statistics.gram_original, low_rank,
                    exact, None if exact is None else self._outlier_rows(target, layout, kept)).sum())
            if errors[0] < errors[1]:  # compensated rounding is kept only where it lowers the layer's error
                target.indices = from_rows(rows, layout, target.shape).ravel()
                if compensated is not None:
                    target.outlier_values = compensated
            del rows, nearest, candidates
        exact_values = self._outlier_rows(target, layout)  # the outliers as stored, after the rounding's choice
        indices = to_rows(target.indices.reshape(target.shape), layout)
        target.codebook = reconstruction.refit_codebook(
            original, indices, target.codebook, gram, target.keep is not None,
            cross=statistics.cross, gram_original=statistics.gram_original, exact=exact, exact_values=exact_values,
            activations=low_rank)

    @staticmethod
    def _outlier_rows(target, layout: str, values=None):
        """The outlier values as OutlierRows in the [outputs, inputs] layout (sparse; a row block is made dense
        when sliced), or None without outliers."""
        if not len(target.outlier_positions):
            return None
        shape = to_rows(np.empty(target.shape, dtype=np.bool_), layout).shape
        return OutlierRows(_row_positions(target, layout), target.outlier_values if values is None else values, shape)


def _row_positions(target, layout: str) -> np.ndarray:
    """The flat positions of the target's outliers in its [outputs, inputs] rows (calibration.to_rows), int64."""
    positions = np.asarray(target.outlier_positions, dtype=np.int64)
    if layout == "kn":  # W [K, N] position k * N + n is row n, input k
        inputs, outputs = target.shape
        positions = (positions % outputs) * inputs + positions // outputs
    return positions


class OutlierRows:
    """Outlier values of an [outputs, inputs] array, zero elsewhere, kept as sorted flat positions and float32
    values: ``rows[a:b]`` is the dense float32 [b - a, inputs] block (what a dense array's slice holds), made on
    demand, so the calibrated refit holds the outliers' bytes instead of a whole float32 copy of the weight."""

    def __init__(self, positions: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> None:
        order = np.argsort(positions, kind="stable")
        self.positions, self.shape = positions[order], shape
        self.values = np.asarray(values, dtype=np.float32)[order]

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop, step = part.indices(self.shape[0])
        if step != 1:
            raise IndexError("OutlierRows takes slices of consecutive rows")
        inputs = self.shape[1]
        block = np.zeros((max(stop - start, 0), inputs), dtype=np.float32)
        low, high = np.searchsorted(self.positions, [start * inputs, stop * inputs])
        block.reshape(-1)[self.positions[low:high] - start * inputs] = self.values[low:high]
        return block


def output_axis(target) -> int:
    """The weight's output-channel axis: from the calibration layout when known (MatMul/Gemm [K, N]: 1), else from
    the first consumer (MatMul/Gemm B: the last axis, or 0 with transB; ConvTranspose: 1; Conv, Gather, the rest: 0)."""
    if target.layer_input is not None:
        return 1 if target.layer_input.layout == "kn" else 0
    node, slot = target.uses[0]
    if len(target.shape) >= 2 and slot == 1:
        if node.op == "MatMul" or (node.op == "Gemm" and not node.attrs.get("transB", 0)):
            return len(target.shape) - 1
        if node.op == "ConvTranspose":
            return 1
    return 0


def scale_axis(target) -> int | None:
    """The axis a channel-scaled codebook may scale along (record versions 3, 4), or None: the output channels
    (axis 0) of a float32 weight of rank >= 3 read only as a Conv filter. Other weights keep unscaled records (the
    fused CodebookMatMul kernels have one table per matrix; a scaled [K, N] record is read exactly, but through the
    decode-once dense panels)."""
    if target.dtype != onnx.TensorProto.FLOAT or len(target.shape) < 3 or target.shape[0] < 2:
        return None
    if not target.uses or any(node.op != "Conv" or slot != 1 for node, slot in target.uses):
        return None
    return 0


def output_rows(target):
    """A function mapping arrays of the weight's shape to [output channels, inputs] (for the outlier choice):
    the calibration layout when known, else the output axis first (output_axis)."""
    if target.layer_input is not None:
        layout = target.layer_input.layout
        return lambda array: to_rows(array, layout)
    axis = output_axis(target)
    return lambda array: np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1) if array.ndim else array.reshape(1, 1)
