"""Round four's probe of ordinary mistakes and untrusted files, in this process: a CSV whose delimiter is not a
comma, whose first data row has a letter for a label, or a seed too large for torch's generator; `predict` on a
folder whose links lead elsewhere; a checkpoint without its manifest or with a state.json that does not add up;
and the elastic agent's per-attempt store keys, in a real TCPStore."""
import json
import os
from datetime import timedelta

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_dist import cli, models
from mnist_dist.data import digits_csv, sources
from mnist_dist.errors import DataError
from mnist_dist.run import artifact, checkpoint
from mnist_dist.train import resume, runtime

from helpers import make_digits, one_line_error

# ----------------------------------------------------------------------------- convert's CSV and seed


def write_rows(path, images, labels, sep=",", first_label=None):
    rows = [[int(y), *x.flatten().tolist()] for x, y in zip(images, labels)]
    if first_label is not None:
        rows[0][0] = first_label
    path.write_text("\n".join(sep.join(str(v) for v in row) for row in rows) + "\n")
    return path


@pytest.mark.parametrize("sep", [";", "\t"], ids=["semicolon", "tab"])
def test_semicolon_and_tab_files_read_as_the_comma_one(tmp_path, sep):
    images, labels = make_digits(30, seed=4)
    comma = digits_csv.read_digits_csv(write_rows(tmp_path / "c.csv", images, labels))
    other = digits_csv.read_digits_csv(write_rows(tmp_path / "o.csv", images, labels, sep=sep))
    assert torch.equal(other.images, comma.images) and torch.equal(other.labels, comma.labels)


def test_a_first_row_labelled_with_a_letter_is_data_not_a_header(tmp_path):
    """It was taken as a header: 29 of 30 rows came out, with no word."""
    images, labels = make_digits(30, seed=4)
    path = write_rows(tmp_path / "a.csv", images, labels, first_label="A")
    with pytest.raises(DataError, match="not a CSV of 784 pixels and a label per row"):
        digits_csv.read_digits_csv(path)


def test_any_seed_shuffles_and_seeds_past_32_bits_shuffle_otherwise(capsys, tmp_path):
    images, labels = make_digits(200, seed=4)
    csv = write_rows(tmp_path / "d.csv", images, labels)
    splits = {}
    for seed in (0, 2**32, 99999999999999999999999):
        out = tmp_path / f"out{seed}"
        assert cli.main(["convert", str(csv), str(out), "--test-size", "50", "--seed", str(seed)]) == 0
        splits[seed] = sources.load_idx(out, "test").labels.tolist()
    assert splits[0] != splits[2**32] and len({tuple(v) for v in splits.values()}) == 3
    one_line_error(capsys, ["convert", str(csv), str(tmp_path / "neg"), "--seed", "-1"], "--seed")
    assert not (tmp_path / "neg").exists()


# ----------------------------------------------------------------------------- predict's folders


def test_predict_follows_no_link_out_of_its_folders_and_says_what_it_skipped(capsys, tmp_path):
    model_dir = tmp_path / "model"
    artifact.save_model(model_dir, models.build("mlp_128"), "mlp_128", {}, "mnist", 0.1307, 0.3081)
    pictures, elsewhere = tmp_path / "pictures", tmp_path / "elsewhere"
    pictures.mkdir()
    elsewhere.mkdir()
    digit = Image.fromarray(np.asarray(make_digits(1, seed=1)[0][0]))
    digit.save(pictures / "mine.png")
    digit.save(elsewhere / "secret.png")
    (pictures / "inside.png").symlink_to(pictures / "mine.png")
    (pictures / "out.png").symlink_to(elsewhere / "secret.png")
    (pictures / "gone.png").symlink_to(tmp_path / "nothing.png")
    (pictures / "loop.png").symlink_to(pictures / "loop.png")  # resolve() raised RuntimeError: a traceback
    assert cli.main(["predict", str(model_dir), str(pictures)]) == 1  # something was skipped
    out, err = capsys.readouterr()
    assert f"{pictures / 'loop.png'}: skipped: a link loop" in err
    assert sorted(line.split(":")[0] for line in out.splitlines()) == [str(pictures / "inside.png"),
                                                                       str(pictures / "mine.png")]
    assert f"{pictures / 'out.png'}: skipped: a link out of the folders named" in err
    assert f"{pictures / 'gone.png'}: skipped: a broken link" in err
    # Named explicitly, or with its own folder named too, a linked file is the user's choice.
    assert cli.main(["predict", str(model_dir), str(pictures), str(elsewhere)]) == 1  # only gone.png is skipped
    assert f"{pictures / 'out.png'}: " in capsys.readouterr().out


def test_max_pixels_below_one_is_one_line(capsys, tmp_path):
    one_line_error(capsys, ["predict", str(tmp_path), str(tmp_path / "x.png"), "--max-pixels", "0"], "--max-pixels")


# ----------------------------------------------------------------------------- a checkpoint's state.json


def fake_checkpoint(folder, state: dict, manifest: bool):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "state.json").write_text(json.dumps(state))
    if manifest:
        checkpoint.write_manifest(folder)
    return folder


GOOD = {"format": checkpoint.FORMAT, "epoch": 1, "step_in_epoch": 5, "global_step": 25, "samples_seen": 1250,
        "world_size": 1, "samples_seen_per_rank": [1250]}


def damage(folder):
    return checkpoint.damage(folder, lambda state: resume.state_problem(state, steps_per_epoch=20))


def test_a_checkpoint_whose_manifest_was_deleted_is_damaged(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "step_00000025", GOOD, manifest=True)
    assert damage(ckpt) is None
    (ckpt / "manifest.json").unlink()
    assert damage(ckpt) == f"{ckpt / 'manifest.json'}: missing"
    # One from before manifests (its state.json has no format) is checked in full instead, and resumes.
    legacy = fake_checkpoint(tmp_path / "legacy", {k: v for k, v in GOOD.items() if k != "format"}, manifest=False)
    assert damage(legacy) is None


@pytest.mark.parametrize("change, words", [
    ({"epoch": "two"}, "epoch is 'two', not int"),
    ({"global_step": -5}, "global_step is -5"),
    ({"global_step": 26}, "global_step 26 is not epoch 1 x 20 steps + step_in_epoch 5"),
    ({"step_in_epoch": 25, "epoch": 0}, "global_step 25 is not epoch 0 x 20 steps + step_in_epoch 25"),
    ({"train_seconds": "fast"}, "train_seconds is 'fast', not float"),
    ({"stopped_early": 1}, "stopped_early is 1, not bool"),
    ({"world_size": 0}, "world_size is 0"),
    ({"samples_seen_per_rank": [1, 2]}, "samples_seen_per_rank is [1, 2], not a count for each of 1 processes"),
    ({"samples_seen_per_rank": ["many"]}, "samples_seen_per_rank is ['many'], not a count for each of 1 processes"),
    ({"samples_seen_per_rank": [True]}, "samples_seen_per_rank is [True], not a count"),
])
def test_a_state_json_that_does_not_add_up_is_damaged_with_or_without_a_manifest(tmp_path, change, words):
    for manifest in (True, False):
        ckpt = fake_checkpoint(tmp_path / f"step_{manifest}", {**GOOD, **change}, manifest=manifest)
        why = damage(ckpt)
        assert why is not None and why.startswith(f"{ckpt / 'state.json'}: ") and words in why, why


# ----------------------------------------------------------------------------- the elastic agent's store


def test_each_restart_of_the_elastic_agent_writes_under_keys_of_its_own():
    """The agent serves one TCPStore for every attempt: attempts 1 and 2 must not read each other's keys (gloo's
    peer addresses, the start-up barrier's counters)."""
    dist = torch.distributed
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10))
    first, second = (dist.PrefixStore(runtime.attempt_prefix(str(k)), store) for k in (1, 2))
    first.set("rank0/addr", "host-of-attempt-1")
    assert runtime.attempt_prefix("1") != runtime.attempt_prefix("2")
    assert not second.check(["rank0/addr"]) and first.get("rank0/addr") == b"host-of-attempt-1"
    second.set("rank0/addr", "host-of-attempt-2")
    assert first.get("rank0/addr") == b"host-of-attempt-1"
    assert os.environ.get("TORCHELASTIC_RESTART_COUNT") is None  # no agent around this test


def test_the_counts_are_checked_against_each_other_alone_until_the_run_is_known_to_be_the_same():
    """Without this run's epoch length only what state.json says of itself: epoch 1 of 21 steps is whole (another
    batch size is then the config check's one line, not damage); a missing count reads as 0, not a KeyError."""
    assert resume.state_problem({**GOOD, "global_step": 26}) is None
    assert "global_step 3 is not epoch 1" in resume.state_problem({**GOOD, "global_step": 3})
    assert "global_step 12 is not epoch 2 x 3 steps + step_in_epoch 5" in resume.state_problem(
        {**GOOD, "epoch": 2, "global_step": 12})
    assert resume.state_problem({k: v for k, v in GOOD.items() if k not in ("epoch", "global_step")}) is not None
