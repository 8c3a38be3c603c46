"""ApplySettingsPass: per-weight sparsity and bit width (or codebook size: ``codebook_size`` K, a k-means codebook of at
most K entries, the pruned 0.0 included, indexed with ceil(log2 K) bits), or ``skip`` (leave dense; with ``float16`` the writer stores
it as binary16, half_dense.halve_dense_weights), by weight name (from a budget allocation). A recurrent weight that FoldRecurrentWeightsPass folded (``NAME.folded``) takes the setting of
the initializer it was folded from (``NAME``): the budget measures the model as given, compress folds it first."""

from __future__ import annotations

from onnxcomp.errors import InvalidOptionError

from .base import CompressionState, GraphPass, PassResult
from .fold_weights import FOLDED_NAME


class ApplySettingsPass(GraphPass):
    def __init__(self, *, settings: dict[str, dict]) -> None:
        for name, values in settings.items():
            unknown = set(values) - {"sparsity", "bits", "codebook_size", "skip", "float16"}
            if unknown:
                raise InvalidOptionError(f"setting for {name!r} has unknown keys {sorted(unknown)}: use sparsity, bits, "
                                         "codebook_size, skip, float16")
            size = values.get("codebook_size")
            if size is not None and (not isinstance(size, int) or not 2 <= size <= 1 << 16
                                     or values.get("bits", index_bits(size)) != index_bits(size)):
                raise InvalidOptionError(f"setting for {name!r}: codebook_size {size!r} must be an integer from 2 to 65536 "
                                         f"whose index bits ceil(log2 K) = bits")
            if values.get("float16") and not values.get("skip"):
                raise InvalidOptionError(f"setting for {name!r}: float16 stores a weight left dense, so it needs skip")
        self.settings = settings

    def run(self, state: CompressionState) -> PassResult:
        applied = 0
        for target in list(state.targets):
            values = self.settings.get(target.name, self.settings.get(FOLDED_NAME.sub("", target.name)))
            if values and values.get("skip"):
                state.targets.remove(target)
                state.skipped.append((target.name, "left dense by the budget allocation" + (" (float16)" if values.get("float16") else "")))
                applied += 1
            elif values:
                target.sparsity_override = values.get("sparsity", target.sparsity_override)
                target.bits_override = values.get("bits", target.bits_override)
                if values.get("codebook_size"):
                    target.codebook_size_override = values["codebook_size"]
                    target.bits_override = index_bits(values["codebook_size"])
                applied += 1
        return PassResult(False, f"applied settings to {applied} weights")


def index_bits(codebook_size: int) -> int:
    """The index bits of a codebook of ``codebook_size`` entries: ceil(log2 K), at least 1."""
    return max(1, (int(codebook_size) - 1).bit_length())
