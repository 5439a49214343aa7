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

MACROS: tuple[str, ...] = (
    "${env}",
    "${interpreter}",
    "${program}",
    "${args}",
    "${args_no_hyphens}",
)
MACROS += ("${args_no_boolean_flags}", "${args_json}", "${args_json_file}")
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values")
GOALS = ("maximize", "minimize")
# The numbers each evaluation logs, as W&B charts them (train/loop.evaluate's record, named by metrics.name): what
# `wandb agent` and the local runner can optimise, and `compare` rank by. metrics.jsonl has each under the name with
# an underscore (val/accuracy is val_accuracy).
LOGGED_METRICS = tuple(
    "val/accuracy val/loss test/accuracy test/loss train/loss train/accuracy train/seconds epoch".split()
)


@dataclass
class Sweep:
    name: str
    method: str  # grid | random
    metric: str  # as runs log it to W&B, e.g. val/accuracy
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


def metric_key(name: str, what: str, file_names: bool = False) -> str:
    """The metrics.jsonl key of a metric named as runs log it to W&B (val/accuracy -> val_accuracy); with
    file_names, metrics.jsonl's own name is taken too. A metric no run logs is refused in one line: a misspelled one
    would rank every point by nothing, and under `wandb agent` bayes search and early_terminate would never see it."""
    logged = name.replace("_", "/", 1) if file_names and name not in LOGGED_METRICS else name
    if logged in LOGGED_METRICS:
        return logged.replace("/", "_", 1)
    close = difflib.get_close_matches(name.replace("_", "/", 1), LOGGED_METRICS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(LOGGED_METRICS)
    raise ConfigError(f"{what} {name!r} is not a metric runs log to W&B{hint} (one of {known})")


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
    if method not in ("grid", "random") or "early_terminate" in raw:
        what = f"method {method!r}" if method not in ("grid", "random") else "early_terminate"
        raise ConfigError(
            f"{path}: {what} needs W&B's sweep server: the local runner draws grid and random points only. Run it "
            f"with `wandb sweep {path}` and then `wandb agent SWEEP_ID`"
        )
    metric = raw.get("metric") or {}
    goal = metric.get("goal", "maximize") if isinstance(metric, dict) else None
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or goal not in GOALS:
        raise ConfigError(
            f"{path}: metric must be {{name: val/accuracy, goal: maximize | minimize}}"
        )
    metric_key(metric["name"], f"{path}: metric.name")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(
            f"{path}: parameters must map dotted config keys to {{values: [...]}} or {{value: x}}"
        )
    known = set(config.all_keys())
    for key, spec in params.items():
        check_parameter(f"{path}: parameters", key, spec, method, known)
    command = raw.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    if "${args_no_hyphens}" not in command:
        raise ConfigError(
            f"{path}: the command must pass the parameters as ${{args_no_hyphens}} (key=value words)"
        )
    start = command.index("${program}") + 1 if "${program}" in command else 0
    base = [str(word) for word in command[start:] if str(word) not in MACROS]
    return Sweep(path.stem, method, metric["name"], goal == "maximize", params, base)


def check_parameter(where: str, key: str, spec, method: str, known: set[str]) -> None:
    """One parameter of a sweep file: a config key, with values, a value, or (random) a distribution."""
    if key not in known:
        raise ConfigError(f"{where}: {key!r} is not a config key (see mnist-dist train --help)")
    listed = isinstance(spec, dict) and (
        "value" in spec or isinstance(spec.get("values"), list) and spec["values"]
    )
    drawn = (
        isinstance(spec, dict)
        and spec.get("distribution") in DISTRIBUTIONS
        and {"min", "max"} <= set(spec)
    )
    if not (listed or (method == "random" and drawn)):
        more = f" (or distribution: {' | '.join(DISTRIBUTIONS)} with min and max)"
        raise ConfigError(
            f"{where}.{key} needs values: [...] or value: x"
            + (more if method == "random" else " (a grid takes no distributions)")
        )
    if not listed:
        lo, hi, dist = spec["min"], spec["max"], spec["distribution"]
        kinds = int if dist == "int_uniform" else (int, float)
        numbers = isinstance(lo, kinds) and isinstance(hi, kinds) and not isinstance(lo, bool)
        if not (numbers and lo < hi) or (dist == "log_uniform_values" and lo <= 0):
            raise ConfigError(
                f"{where}.{key}: {dist} needs min < max"
                + (", both integers" if dist == "int_uniform" else "")
                + (", min > 0" if dist == "log_uniform_values" else "")
                + f"; got {lo}, {hi}"
            )
