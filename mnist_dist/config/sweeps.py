"""Sweep files in W&B's sweep format, read without a W&B server: the points of a grid or a random search, and
the training arguments each point runs with.

A sweep file (configs/sweeps/*.yaml) has `method` (grid | random), `metric` ({name, goal}), `parameters` keyed by
dotted config keys ({values: [...]}, {value: x}, or for random {distribution: uniform | int_uniform |
log_uniform_values, min, max}) and a `command` whose words between `${program}` and `${args_no_hyphens}` (such
as `--config debug`) are the base of every point. `wandb agent` expands the same command itself.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from mnist_dist import config
from mnist_dist.config import ConfigError

MACROS = (
    "${env}",
    "${interpreter}",
    "${program}",
    "${args}",
    "${args_no_hyphens}",
    "${args_no_boolean_flags}",
    "${args_json}",
    "${args_json_file}",
)
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values")
# The scalars of a metrics.jsonl record (train/loop.evaluate: where the run was, the training window, each split's
# metrics.summarize, the time): what a sweep and `compare` can rank by.
RECORDED_METRICS = (
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_accuracy",
    "train_seconds",
    "epoch",
    "global_step",
    "val_count",
    "test_count",
)


@dataclass
class Sweep:
    name: str
    method: str  # grid | random
    metric: str  # a metrics.jsonl key, e.g. val_accuracy
    maximize: bool
    parameters: dict  # dotted key -> its spec
    base_args: list[str]  # the command's own training arguments, e.g. ["--config", "debug"]

    def points(self, count: int | None = None, seed: int = 0) -> list[dict]:
        """The grid's points (in file order, the last parameter fastest): all of them, or the first `count`; or
        `count` random ones (default 4, seeded)."""
        if self.method == "grid":
            keys = list(self.parameters)
            values = [
                spec["values"] if "values" in spec else [spec["value"]]
                for spec in self.parameters.values()
            ]
            return [
                dict(zip(keys, combo))
                for combo in itertools.islice(itertools.product(*values), count)
            ]
        rng = random.Random(seed)
        return [
            {key: _draw(spec, rng) for key, spec in self.parameters.items()}
            for _ in range(count or 4)
        ]


def _draw(spec: dict, rng: random.Random):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    lo, hi = spec["min"], spec["max"]
    if spec["distribution"] == "int_uniform":
        return rng.randint(lo, hi)
    if spec["distribution"] == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.uniform(lo, hi)


def check_metric(name: str, what: str) -> None:
    """Refuses a metric no run records (a misspelled one would rank every point by nothing)."""
    if name not in RECORDED_METRICS:
        close = difflib.get_close_matches(name, RECORDED_METRICS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{what} {name!r} is not a metric a run records{hint} (one of {', '.join(RECORDED_METRICS)})"
        )


def overrides(point: dict) -> list[str]:
    """`key=value` words, as W&B's ${args_no_hyphens} writes them (values as YAML our overrides parse back)."""
    return [
        f"{key}={value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in point.items()
    ]


def load(path: str | Path) -> Sweep:
    """Read and check a sweep file; every mistake is one ConfigError line naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(
            f"{path}: cannot read the sweep file ({str(e).splitlines()[0]})"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a sweep file is a mapping with method, metric, parameters and command"
        )
    method = raw.get("method")
    if method not in ("grid", "random"):
        raise ConfigError(
            f"{path}: method must be grid or random, got {method!r} (bayes needs a W&B server)"
        )
    metric = raw.get("metric") or {}
    if (
        not isinstance(metric, dict)
        or not isinstance(metric.get("name"), str)
        or metric.get("goal", "maximize") not in ("maximize", "minimize")
    ):
        raise ConfigError(
            f"{path}: metric must be {{name: val_accuracy, goal: maximize | minimize}}"
        )
    check_metric(metric["name"], f"{path}: metric.name")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(
            f"{path}: parameters must map dotted config keys to {{values: [...]}} or {{value: x}}"
        )
    known = set(config.all_keys())
    for key, spec in params.items():
        if key not in known:
            raise ConfigError(
                f"{path}: parameters: {key!r} is not a config key (see mnist-dist train --help)"
            )
        ok = isinstance(spec, dict) and (
            ("values" in spec and isinstance(spec["values"], list) and spec["values"])
            or "value" in spec
            or (
                method == "random"
                and spec.get("distribution") in DISTRIBUTIONS
                and "min" in spec
                and "max" in spec
            )
        )
        if not ok:
            raise ConfigError(
                f"{path}: parameters.{key} needs values: [...] or value: x"
                + (
                    f" (or distribution: {' | '.join(DISTRIBUTIONS)} with min and max)"
                    if method == "random"
                    else " (a grid takes no distributions)"
                )
            )
        if "distribution" in spec and "values" not in spec and "value" not in spec:
            lo, hi, dist = spec["min"], spec["max"], spec["distribution"]
            kinds = int if dist == "int_uniform" else (int, float)
            if not (
                isinstance(lo, kinds)
                and isinstance(hi, kinds)
                and not isinstance(lo, bool)
                and lo < hi
            ) or (dist == "log_uniform_values" and lo <= 0):
                raise ConfigError(
                    f"{path}: parameters.{key}: {dist} needs min < max"
                    + (", both integers" if dist == "int_uniform" else "")
                    + (", min > 0" if dist == "log_uniform_values" else "")
                    + f"; got {lo}, {hi}"
                )
    command = raw.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    if "${args_no_hyphens}" not in command:
        raise ConfigError(
            f"{path}: the command must pass the parameters as ${{args_no_hyphens}} (key=value words)"
        )
    start = command.index("${program}") + 1 if "${program}" in command else 0
    base = [str(word) for word in command[start:] if str(word) not in MACROS]
    return Sweep(
        path.stem,
        method,
        metric["name"],
        metric.get("goal", "maximize") == "maximize",
        params,
        base,
    )
