"""Building the config tree: defaults < YAML file or recipe < dotted `a.b=value` overrides, each value checked
against its field's type and choices as the tree is built; the flat views a resume compares; the recipes.

Every mistake is one ConfigError line that names the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from mnist_dist.config.schema import (
    INT64_LIMIT,
    MAY_CHANGE,
    MUST_MATCH,
    Config,
    ConfigError,
)

# ----------------------------------------------------------------------------- views


def flatten(tree: Config | dict, prefix: str = "") -> dict:
    """{"train.lr": 0.003, "model.kwargs": {...}, ...} from a Config or its dict (as saved in a checkpoint): one
    entry per field; a dict-valued field (model.kwargs, tracking.init_kwargs) is one value, not more keys."""
    tree = to_dict(tree) if dataclasses.is_dataclass(tree) else tree
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not prefix:  # only the top level holds sections
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def all_keys() -> list[str]:
    return list(field_metadata())


def field_metadata() -> dict:
    """{"train.lr": that field's metadata (see rules()), ...} for every key."""
    sections = typing.get_type_hints(Config)
    return {
        f"{s.name}.{f.name}": f.metadata
        for s in dataclasses.fields(Config)
        for f in dataclasses.fields(sections[s.name])
    }


def may_change_on_resume(key: str, cfg: Config) -> bool:
    """The policy in the key's own metadata: MAY_CHANGE, or MUST_MATCH unless its may_change_if holds for cfg."""
    rule = field_metadata()[key]
    if rule.get("resume", MUST_MATCH) == MAY_CHANGE:
        return True
    return bool(rule.get("may_change_if") and rule["may_change_if"](cfg))


def resume_conflicts(saved: dict, cfg: Config) -> list[str]:
    """'key old -> new' for every key that differs between a checkpoint's config and this one although its
    metadata says it must match on resume (it shapes the run's numbers)."""
    old, new = flatten(saved), flatten(cfg)
    return [
        f"{key} {old[key]!r} -> {value!r}"
        for key, value in new.items()
        if key in old and old[key] != value and not may_change_on_resume(key, cfg)
    ]


# ----------------------------------------------------------------------------- building from dicts


def _coerce(key: str, value, tp, rules: Mapping):
    """Check (and gently convert) one leaf value against its annotated type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # `X | None`
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if value is None and tp in (dict, list):  # `model.kwargs=null` clears a recipe's kwargs
        return tp()
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if tp is str and value is False and "no" in rules.get("choices", ()):
        value = "no"  # YAML turns `no` into False; mixed_precision=no is common enough to accept
    kinds = {
        bool: (bool, "true or false"),
        int: (int, "an integer"),
        float: ((int, float), "a number"),
    }
    kind, words = kinds.get(tp, (tp, f"a {tp.__name__}" if tp in (str, list, dict) else ""))
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be {words}, got {value!r}")
    # torch, numpy, safetensors hold int64
    if tp is int and not -INT64_LIMIT <= value < INT64_LIMIT:
        raise ConfigError(f"{key} must be below 2^63 in size, got {value}")
    if tp is float and not math.isfinite(value := float(value)):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if (choices := rules.get("choices")) and value not in choices:
        raise ConfigError(f"{key}: invalid value {value!r}; choose one of {', '.join(choices)}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        if name not in fields:
            close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} Valid keys here: {', '.join(fields)} "
                f"(all keys: mnist-dist train --help)"
            )
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value or {}, key + ".")
        else:
            kwargs[name] = _coerce(key, value, tp, fields[name].metadata)
    return cls(**kwargs)  # each section's __post_init__ checks its own values


def merge(base: dict, override: dict) -> dict:
    """Nested dicts merge key by key; any other value, and an empty dict (`model.kwargs={}` clears), replaces."""
    out = dict(base)
    for k, v in override.items():
        nested = isinstance(v, dict) and v and isinstance(out.get(k), dict)
        out[k] = merge(out[k], v) if nested else v
    return out


def parse_override(text: str) -> dict:
    """`train.lr=0.01` -> {"train": {"lr": 0.01}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
            f"quote it for the shell, e.g. '{key}={{width: 8}}'"
        ) from None
    if isinstance(value, str) or value is None:
        value = raw if raw not in ("null", "~") else None
    parts = key.strip().split(".")
    out: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """path: a YAML file, or the name of a recipe (`fast_fashion`, see `mnist-dist recipes`)."""
    data: dict = {}
    if path is not None:
        path = recipe_path(str(path))
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: must be a mapping of sections (data, model, train, checkpoint, tracking, "
                f"run), got {type(data).__name__} {str(data)[:60]!r}"
            )
        for (
            name,
            section,
        ) in data.items():  # before overrides are merged in: they would replace a list
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{path}: {name} must be a mapping, got {section!r}")
    sections = typing.get_type_hints(Config)
    for text in overrides:
        override = parse_override(text)
        ((key, value),) = override.items()
        if key in sections and not (isinstance(value, dict) and value):
            # `train=`, `data={}`: merged, it would silently put a whole recipe section back to its defaults.
            example = dataclasses.fields(sections[key])[0].name
            raise ConfigError(
                f"override {text!r}: {key} is a whole section, and this would put every {key} key back "
                f"to its default; set its keys one by one (e.g. {key}.{example}=...), or leave out "
                f"--config to start from the defaults"
            )
        data = merge(data, override)
    return from_dict(Config, data)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- recipes


def recipe_dirs() -> list[Path]:
    """Where recipes live: inside the installed package (the wheel ships configs/ as mnist_dist/configs), or the
    checkout's configs/ beside the package (a development install)."""
    package = Path(__file__).resolve().parents[1]
    folders = (package / "configs" / "train", package.parent / "configs" / "train")
    return [d for d in folders if d.is_dir()]


def recipes() -> dict[str, Path]:
    found = {}
    for folder in reversed(recipe_dirs()):
        found.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return dict(sorted(found.items()))


def recipe_summary(path: Path) -> str:
    """The recipe's first comment line."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def recipe_path(name: str) -> Path:
    """A YAML file, or a recipe by name (`debug`, `fast_fashion.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    known = recipes()
    if path.stem in known and len(path.parts) == 1:
        return known[path.stem]
    close = difflib.get_close_matches(path.stem, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"config file not found: {name} ({hint}recipes: {', '.join(known) or 'none installed'})"
    )
