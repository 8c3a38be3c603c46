"""ApplySettingsPass: per-weight sparsity and bit width, or ``skip`` (leave dense; with ``float16`` the writer stores
it as binary16, half_dense.halve_dense_weights), by weight name (from a budget allocation). A recurrent weight that FoldRecurrentWeightsPass folded (``NAME.folded``) takes the setting of
the initializer it was folded from (``NAME``): the budget measures the model as given, compress folds it first."""

from __future__ import annotations

from onnxcomp.errors import InvalidOptionError

from .base import CompressionState, GraphPass, PassResult
from .fold_weights import FOLDED_NAME


class ApplySettingsPass(GraphPass):
    def __init__(self, *, settings: dict[str, dict]) -> None:
        for name, values in settings.items():
            unknown = set(values) - {"sparsity", "bits", "skip", "float16"}
            if unknown:
                raise InvalidOptionError(f"setting for {name!r} has unknown keys {sorted(unknown)}: use sparsity, bits, skip, float16")
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
                applied += 1
        return PassResult(False, f"applied settings to {applied} weights")
