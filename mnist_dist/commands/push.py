"""`mnist-dist push RUN_DIR REPO_ID`: a run's model to the Hugging Face Hub, only the files of the Hub layout
(mnist_dist/hub.py): never checkpoints/ (pickled optimizer and RNG state), wandb/, previous-*/ or .lock.

The token is huggingface_hub's business (HF_TOKEN, or `hf auth login`'s cache); nothing here reads it.
"""

from __future__ import annotations

from mnist_dist.run import rundir


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run folder")
    p.add_argument(
        "repo_id", metavar="REPO_ID", help="the Hub model repo, owner/name (created if missing)"
    )
    p.add_argument(
        "--best",
        action="store_true",
        help="push the best model by validation (RUN_DIR/best/) instead of the final one",
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", default="Upload model from mnist-dist", help="the commit message")


def run(args) -> int:
    """Writes the Hub layout into the model's own folder (RUN_DIR, or RUN_DIR/best/), then uploads only it."""
    from mnist_dist.outputs import hub  # huggingface_hub: not for every command's start

    source = rundir.pick_model(args.run, args.best)
    if not source.is_dir():
        raise hub.HubError(f"{source}: push takes a run folder")
    # The card's snippets name the repo.
    hub.export(source, rundir.of_model(source), source, args.best, args.repo_id)
    url = hub.push(source, args.repo_id, args.private, args.message)
    print(
        f"pushed {', '.join(n for n in hub.HUB_FILES if (source / n).is_file())} to {args.repo_id}: {url}"
    )
    return 0
