"""Recipes: named sets of compress options plus per-layer rules matched on the weight's name.

A recipe file (TOML) looks like::

    description = "what this recipe is for"
    base = "deep-compression"        # optional: start from a built-in recipe
    [options]                        # any option of onnxcomp.compress / the CLI (dashes or underscores)
    sparsity = { fc = 0.6, conv = 0.2 }
    bits = { fc = 4, conv = 6 }
    [[layer]]                        # rules, matched with fnmatch on the initializer name; later rules win
    pattern = "classifier.*"
    bits = 8                         # and/or: sparsity = 0.3, score = "magnitude" | "wanda" | "tfidf" | "obs", skip = true,
                                     # outliers = "auto" | 0.005 (fraction kept exact; 0 = none)

Precedence, lowest first: built-in defaults, the base recipe, the file, options given explicitly (CLI flags or
keyword arguments). Per-kind mappings (``bits``, ``sparsity``) merge kind by kind; a single number replaces
the whole mapping. Per-layer rules override every per-kind or global value for the layers they match.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnxcomp.errors import InvalidOptionError

RULE_SCORES = ("magnitude", "wanda", "tfidf", "obs")


@dataclass(frozen=True)
class LayerRule:
    """Settings for the weights whose initializer name matches ``pattern`` (fnmatch, case-sensitive)."""

    pattern: str
    skip: bool = False
    bits: int | None = None
    sparsity: float | None = None
    score: str | None = None
    outliers: str | float | None = None

    def __post_init__(self) -> None:
        if self.bits is not None and (not isinstance(self.bits, int) or not 1 <= self.bits <= 16):
            raise InvalidOptionError(f"layer rule {self.pattern!r}: bits {self.bits} is out of range: give an integer from 1 to 16")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise InvalidOptionError(f"layer rule {self.pattern!r}: sparsity {self.sparsity} is out of range: give a fraction in [0, 1)")
        if self.score is not None and self.score not in RULE_SCORES:
            raise InvalidOptionError(f"layer rule {self.pattern!r}: unknown score {self.score!r}: use one of {', '.join(RULE_SCORES)}")
        if self.outliers is not None:
            from onnxcomp.core.outliers import parse_option
            try:
                parse_option(self.outliers)
            except InvalidOptionError as error:
                raise InvalidOptionError(f"layer rule {self.pattern!r}: {error}") from None

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


def rule_value(rules: Sequence[LayerRule], name: str, setting: str):
    """The value of ``setting`` from the last rule matching ``name`` that sets it, else None."""
    value = None
    for rule in rules:
        setting_value = getattr(rule, setting)
        if rule.matches(name) and setting_value is not None and setting_value is not False:  # 0.0 is a value
            value = setting_value
    return value


@dataclass
class Recipe:
    name: str
    description: str
    options: dict = field(default_factory=dict)
    layers: list[LayerRule] = field(default_factory=list)


BUILTIN = {
    "default": Recipe("default", "the fixed per-kind settings: magnitude pruning of 50% of fc weights, 3-bit fc / 5-bit conv / "
                      "6-bit embedding codebooks (chosen on the bundled LeNets; without options onnxcomp picks per layer "
                      "instead, see docs/guide.md)"),
    "deep-compression": Recipe(
        "deep-compression", "the bit widths of Han et al. 2016 (8-bit conv, 5-bit fc); without the paper's retraining "
        "the pruning is moderate: 50% of fc, 20% of conv weights by magnitude",
        {"prune": "magnitude", "bits": {"conv": 8, "fc": 5, "embedding": 8}, "sparsity": {"conv": 0.2, "fc": 0.5, "embedding": 0.0}}),
    "conservative": Recipe(
        "conservative", "a safe first try on an unknown model: 6-bit fc, 8-bit conv and embedding codebooks, "
        "30% of fc weights pruned",
        {"prune": "magnitude", "bits": {"conv": 8, "fc": 6, "embedding": 8}, "sparsity": {"conv": 0.0, "fc": 0.3, "embedding": 0.0}}),
}


def _rules(entries, source: str) -> list[LayerRule]:
    if not isinstance(entries, list):
        raise InvalidOptionError(f"{source}: 'layer' must be an array of tables ([[layer]])")
    rules = []
    for entry in entries:
        unknown = set(entry) - {"pattern", "skip", "bits", "sparsity", "score", "outliers"}
        if "pattern" not in entry or unknown:
            raise InvalidOptionError(f"{source}: each [[layer]] needs 'pattern' and may set skip, bits, sparsity, score, outliers"
                                     + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        rules.append(LayerRule(**entry))
    return rules


def load(path: str | os.PathLike) -> Recipe:
    """Read a recipe file (see the module docstring)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as error:
        raise InvalidOptionError(f"{path}: no such recipe file") from error
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise InvalidOptionError(f"{path} is not a readable TOML recipe ({error})") from error
    unknown = set(data) - {"description", "base", "options", "layer"}
    if unknown:
        raise InvalidOptionError(f"{path}: unknown top-level keys {', '.join(sorted(unknown))} (allowed: description, base, options, layer)")
    options = {key.replace("-", "_"): value for key, value in data.get("options", {}).items()}
    recipe = Recipe(os.path.basename(path), data.get("description", ""), options, _rules(data.get("layer", []), path))
    if "base" in data:
        base = builtin(data["base"])
        recipe.options = merge_options(base.options, recipe.options)
        recipe.layers = base.layers + recipe.layers
    return recipe


def builtin(name: str) -> Recipe:
    if name not in BUILTIN:
        raise InvalidOptionError(f"unknown recipe {name!r}: use one of {', '.join(BUILTIN)} (onnxcomp recipes lists them)")
    return BUILTIN[name]


def merge_options(base: Mapping, override: Mapping) -> dict:
    """``override`` on top of ``base``; per-kind mappings merge kind by kind."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def resolve(recipe: str | Recipe | None, config: str | os.PathLike | None, options: Mapping) -> dict:
    """Compress options from a built-in recipe name (or Recipe), a recipe file and explicit options, in that order."""
    resolved: dict = {}
    layers: list[LayerRule] = []
    for source in (builtin(recipe) if isinstance(recipe, str) else recipe, load(config) if config else None):
        if source is not None:
            resolved = merge_options(resolved, source.options)
            layers += source.layers
    resolved = merge_options(resolved, options)
    layers += [r if isinstance(r, LayerRule) else LayerRule(**r) for r in options.get("layers", ())]
    resolved["layers"] = layers
    return resolved
