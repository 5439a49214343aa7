"""Each config key carries its policy in its own field metadata (config.rules): whether a resume may change it,
and its range. The resume check and the range checks read only that metadata; every key is tried here against
the contract the README and docs/configuration.md state (which keys a resume honours, which it refuses)."""

import dataclasses
import re
import typing

import pytest

from mnist_dist import config
from mnist_dist.config import ConfigError

# The keys a resume honours: where the data are read from, how the run is computed, watched, checkpointed,
# launched and stopped. Every other key shapes the run's numbers and must match its checkpoint.
MAY_CHANGE = {
    "data.dir",
    "data.source",
    "data.hf_path",
    "data.num_workers",
    "model.compile",
    "model.channels_last",
    "train.global_batch_size",
    "train.device",
    "train.eval_batch_size",
    "train.log_every_steps",
    "train.max_steps",
    "train.progress",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "checkpoint.resume",
    *(f"tracking.{f.name}" for f in dataclasses.fields(config.TrackingConfig)),
    *(f"run.{f.name}" for f in dataclasses.fields(config.RunConfig)),
}


def another_value(row: dict):
    """A valid value for the key other than its default."""
    special = {
        "model.kwargs": {"width": 8},
        "tracking.init_kwargs": {"notes": "x"},
        "run.preempt_signals": ["SIGUSR2"],
        "tracking.tags": ["x"],
        "model.name": "cnn_bn",
        "data.name": "fashion_mnist",
    }
    if row["key"] in special:
        return special[row["key"]]
    if row["choices"]:
        return next(c for c in row["choices"] if c != row["default"])
    if isinstance(row["default"], bool):
        return not row["default"]
    if isinstance(row["default"], int):
        return row["default"] + 1
    if isinstance(row["default"], float):
        return row["default"] / 2 if row["default"] else 0.1  # inside [0, 1) ranges too (momentum 0.9)
    return "elsewhere"  # a string or null key: a path, a name


def with_value(key: str, value) -> config.Config:
    section, name = key.split(".")
    tree = config.to_dict(config.Config())
    tree[section][name] = value
    return config.from_dict(config.Config, tree)


@pytest.mark.parametrize("row", config.describe(), ids=lambda r: r["key"])
def test_a_resume_refuses_exactly_the_keys_whose_metadata_says_must_match(row):
    saved = config.to_dict(config.Config())
    conflicts = config.resume_conflicts(saved, with_value(row["key"], another_value(row)))
    if row["key"] in MAY_CHANGE:
        assert conflicts == [] and row["resume"] == config.MAY_CHANGE
    else:
        assert [c.split()[0] for c in conflicts] == [row["key"]]
        assert row["resume"] == config.MUST_MATCH


def test_the_conditional_keys_may_change_only_under_their_condition():
    saved = config.to_dict(config.load(None, ["train.scheduler=step"]))
    assert config.resume_conflicts(saved, config.load(None, ["train.scheduler=step", "train.epochs=20"])) == []
    onecycle = config.to_dict(
        config.load(None, ["train.scheduler=onecycle", "train.epochs=8", "train.per_device_batch_size=128"])
    )
    assert config.resume_conflicts(onecycle, config.load(None, ["train.scheduler=onecycle", "train.epochs=20"])) == [
        "train.epochs 8 -> 20"
    ]
    assert (
        config.resume_conflicts(
            onecycle,
            config.load(
                None,
                [
                    "train.scheduler=onecycle",
                    "train.epochs=8",
                    "train.global_batch_size=512",
                    "train.per_device_batch_size=64",
                ],
            ),
        )
        == []
    )
    assert config.resume_conflicts(
        onecycle, config.load(None, ["train.scheduler=onecycle", "train.epochs=8", "train.per_device_batch_size=64"])
    ) == ["train.per_device_batch_size 128 -> 64"]


def test_a_dict_valued_key_is_one_key():
    """tracking.init_kwargs used to be flattened into tracking.init_kwargs.notes, a key no field owns: the reference
    and --help listed one key more than flatten, and a resume that changed it found no policy for it."""
    assert list(config.flatten(config.Config())) == config.all_keys()
    saved = config.to_dict(config.load(None, ["tracking.init_kwargs={notes: a}", "model.kwargs={width: 8}"]))
    new = config.load(None, ["tracking.init_kwargs={notes: b}", "model.kwargs={width: 16}"])
    assert config.resume_conflicts(saved, new) == ["model.kwargs {'width': 8} -> {'width': 16}"]


def bound_cases():
    """(key, a value on the bound that passes or None, a value past it that fails) for each bound in the metadata."""
    sections = typing.get_type_hints(config.Config)
    for section in dataclasses.fields(config.Config):
        hints = typing.get_type_hints(sections[section.name])
        for f in dataclasses.fields(sections[section.name]):
            tp = hints[f.name]  # int or float: the value as the config holds it after from_dict
            step = 1 if tp is int else 0.5
            for kind, bound in (f.metadata.get("range") or {}).items():
                key = f"{section.name}.{f.name}"
                inside = None if kind in ("gt", "lt") else tp(bound)
                outside = tp({"gt": bound, "ge": bound - step, "lt": bound, "le": bound + step}[kind])
                yield pytest.param(key, inside, outside, id=f"{key}-{kind}")


@pytest.mark.parametrize("key, inside, outside", list(bound_cases()))
def test_every_range_in_the_metadata_is_enforced_at_its_bound(key, inside, outside):
    if inside is not None:
        assert config.flatten(with_value(key, inside))[key] == inside
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} must be .*, got {re.escape(str(outside))}$"):
        with_value(key, outside)


def test_range_messages_keep_their_words():
    cases = {
        "data.num_workers=300": "data.num_workers must be at most 256 (processes per rank), got 300",
        "data.num_workers=-1": "data.num_workers must be >= 0, got -1",
        "train.label_smoothing=1": "train.label_smoothing must be in [0, 1), got 1.0",
        "checkpoint.keep=1": "checkpoint.keep must be >= 2 (so a complete checkpoint always survives), got 1",
        "train.lr=0": "train.lr must be > 0, got 0.0",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as e:
            config.load(None, [override])
        assert str(e.value) == message
