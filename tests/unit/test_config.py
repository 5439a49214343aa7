"""The config tree: defaults < YAML < overrides, and every bad key or value fails early with one clear line."""
import re

import pytest

from mnist_dist import config
from mnist_dist.config import ConfigError

from helpers import ROOT


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 1e-3\ndata:\n  name: fashion_mnist\n")
    cfg = config.load(path, ["train.epochs=3", "model.kwargs={width: 8}", "train.mixed_precision=no"])
    assert cfg.train.epochs == 3                  # override beats YAML
    assert cfg.train.lr == pytest.approx(1e-3)    # YAML's 1e-3 (a string to YAML 1.1) read as a number
    assert cfg.data.name == "fashion_mnist"       # YAML beats default
    assert cfg.train.per_device_batch_size == config.TrainConfig().per_device_batch_size  # default kept
    assert cfg.model.kwargs == {"width": 8}
    assert cfg.train.mixed_precision == "no"      # YAML's `no` (False) accepted for a choice that has "no"


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = config.load(None, ["data.dir=/x/y", "tracking.tags=[a, b]", "run.dir=runs/z"])
    path = tmp_path / "config.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg


@pytest.mark.parametrize("override, words", [
    (["train.epohcs=3"], ["train.epohcs", "epochs"]),            # unknown key names the valid ones
    (["nope.x=1"], ["nope", "data"]),
    (["train.per_device_batch_size=0"], ["train.per_device_batch_size", "> 0"]),
    (["train.lr=-0.1"], ["train.lr"]),
    (["train.epochs=two"], ["train.epochs", "integer"]),
    (["data.name=cifar"], ["data.name", "mnist", "fashion_mnist"]),
    (["data.source=ftp"], ["data.source", "auto", "hf", "torchvision", "idx"]),
    (["model.name=resnet"], ["model.name", "cnn_bn", "tutorial_cnn"]),
    (["checkpoint.keep=1"], ["checkpoint.keep"]),
    (["model.name=mlp_128", "model.kwargs={width: 3}"], ["model.kwargs", "width", "dropout"]),
    (["run.preempt_signals=[SIGFOO]"], ["SIGFOO"]),
    (["train.epochs"], ["key=value"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        config.load(None, override)
    for w in words:
        assert w in str(e.value)


def test_recipes_in_configs_are_valid():
    recipes = sorted((ROOT / "configs/train").glob("*.yaml"))
    assert {"default.yaml", "debug.yaml"} <= {p.name for p in recipes}
    for path in recipes:
        config.load(path)


def test_default_yaml_is_the_dataclass_default():
    """`--config configs/train/default.yaml` and no --config must train the same thing."""
    assert config.load(ROOT / "configs/train/default.yaml") == config.Config()


def test_cli_takes_options_and_overrides_in_any_order(capsys):
    from mnist_dist.cli import main
    assert main(["train", "train.epochs=9", "--print-config", "train.lr=0.05", "--config", "configs/train/debug.yaml",
                 "train.seed=7"]) == 0
    merged = config.from_dict(config.Config, __import__("yaml").safe_load(capsys.readouterr().out))
    assert (merged.train.epochs, merged.train.lr, merged.train.seed, merged.data.name) == (9, 0.05, 7, "fashion_mnist")


def test_train_help_lists_every_key_with_type_default_choices_and_docstring(capsys):
    from mnist_dist.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    keys = config.describe()
    assert len(keys) == len(config.flatten(config.Config())) > 40  # every key, generated, none written twice
    for row in keys:
        assert f"\n  {row['key']} = " in out, row["key"]
    assert "  train.lr = 0.005   (float)\n      Peak learning rate." in out  # the docstring under the field
    assert "  data.source = auto   (str: auto | hf | torchvision | idx)" in out
    assert "model.name = cnn_fast   (str: cnn_bn | cnn_fast | mlp_120_84 |" in out  # the model registry's names


def test_a_misspelled_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        config.load(None, ["train.epohcs=3"])
    with pytest.raises(ConfigError, match="did you mean 'data.val_size'"):
        config.load(None, ["data.valsize=3"])


def test_a_recipe_is_found_by_name_and_listed(capsys):
    from mnist_dist.cli import main
    assert config.load("fast_fashion") == config.load(ROOT / "configs/train/fast_fashion.yaml")
    assert config.load("debug.yaml", ["train.epochs=2"]).train.epochs == 2
    with pytest.raises(ConfigError, match="did you mean 'fast_fashion'"):
        config.load("fast_fashon")
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recipes = sorted(p.stem for p in (ROOT / "configs/train").glob("*.yaml"))
    assert [line.split()[0] for line in lines] == recipes
    first = (ROOT / "configs/train/debug.yaml").read_text().splitlines()[0].lstrip("# ")
    assert any(line.split(None, 1)[1] == first for line in lines if line.startswith("debug "))


@pytest.mark.parametrize("override", ["train=", "train=null", "train={}", "data={}", "model=", "train=5"])
def test_a_section_valued_override_is_refused_not_reset_to_defaults(override):
    """`--config debug data={}` used to switch the dataset back to MNIST without a word: a whole section is never
    replaced by an override; a non-empty mapping still merges key by key."""
    section = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{section} is a whole section.*{section}\\.\\w+=") as e:
        config.load("debug", [override])
    assert "\n" not in str(e.value)
    merged = config.load("debug", ["train={epochs: 3}"])
    assert merged.train.epochs == 3 and merged.train.max_steps == config.load("debug").train.max_steps


@pytest.mark.parametrize("override, words", [
    ("train.seed=99999999999999999999999", "below 2^63"),
    (f"train.seed={2**63}", "below 2^63"),
    ("train.seed=-1", "train.seed must be >= 0"),
    (f"train.max_steps={2**64}", "below 2^63"),
    ("data.num_workers=100000", "data.num_workers must be at most 256"),
    (f"run.dist_timeout_s={2**62}", "run.dist_timeout_s must be at most"),
])
def test_integer_keys_have_the_ranges_their_uses_accept(override, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        config.load(None, [override])
    assert config.load(None, [f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1
