"""`mnist-dist scripts`: the SLURM scripts and launch YAMLs, from an installed wheel as from a checkout.

The wheel ships slurm/ as mnist_dist/slurm and configs/ as mnist_dist/configs. `--write DIR` lays them out as in
the checkout (DIR/slurm/, DIR/configs/accelerate/), so that `cd DIR && sbatch slurm/cpu.sbatch ...` works; without
train_accel.py there the scripts launch `python -m mnist_dist train`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mnist_dist.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1]
# Where each shipped folder is in a wheel, then in a checkout (a development install), as config.recipe_dirs.
FOLDERS = {
    name: (PACKAGE / name, PACKAGE.parent / name) for name in ("slurm", "configs/accelerate")
}
PATTERNS = ("*.sbatch", "*.sh", "*.yaml")


def shipped() -> dict[str, Path]:
    """'slurm/cpu.sbatch' -> its file, for every script and launch YAML."""
    found = {}
    for name, places in FOLDERS.items():
        folder = next((d for d in places if d.is_dir()), None)
        if folder is None:
            continue
        for pattern in PATTERNS:
            found.update({f"{name}/{p.name}": p for p in folder.glob(pattern)})
    return dict(sorted(found.items()))


def write(files: dict[str, Path], target: Path) -> list[Path]:
    """Copy every file to target/<name>. An existing file with other content is refused, before anything is
    written (a user's edited script is never overwritten)."""
    clashes = [
        name
        for name, src in files.items()
        if (target / name).exists() and (target / name).read_bytes() != src.read_bytes()
    ]
    if clashes:
        raise UserError(
            f"{target}: {', '.join(clashes)} already there with other content; "
            f"remove {'them' if len(clashes) > 1 else 'it'} or write to another folder"
        )
    written = []
    for name, src in files.items():
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        os.chmod(dst, 0o755 if dst.suffix in (".sbatch", ".sh") else 0o644)
        written.append(dst)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        metavar="FILE",
        help="print this file (e.g. slurm/cpu.sbatch); without it, list them",
    )
    parser.add_argument(
        "--write", metavar="DIR", help="write them all into DIR/slurm/ and DIR/configs/accelerate/"
    )


def run(args) -> int:
    files = shipped()
    if not files:
        raise UserError(f"no SLURM scripts found beside {PACKAGE} (a broken install?)")
    if args.write:
        for path in write(files, Path(args.write)):
            print(path)
        return 0
    if args.name:
        name = args.name.removeprefix("./")
        matches = [n for n in files if n == name or Path(n).name == name]
        if len(matches) != 1:
            raise UserError(f"no shipped file {args.name!r}; there are: {', '.join(files)}")
        print(files[matches[0]].read_text(), end="")
        return 0
    for name in files:
        print(name)
    return 0
