"""The recipes on data that is not MNIST's own files: two image folders of real images, every seed reported.

    python bench/own_data.py                       # both folders, seeds 0-2, a few minutes on 2 CPU cores
    python bench/own_data.py --seeds 0 --out /tmp/x

  fashion4  real Fashion-MNIST images (Debian's dataset-fashion-mnist), four of its classes under names of our
            choosing, all of their 24,000 training and 4,000 test images as 28x28 PNGs: recipe fast_fashion.
  digits64  real MNIST digits (data/mnist, `mnist-dist download mnist data/mnist`) as 64x64 PNGs, dark ink on
            white paper, the digit off-centre: 2,000 training digits a class and all 10,000 test digits, so that
            every image goes through the conversion predict uses (invert, crop, scale, centre): recipe fast_mnist.

Each run is the real CLI (`mnist-dist train --config RECIPE data.name=imagefolder data.dir=...`) in its own
process: the whole-process wall time includes listing and decoding the folder. Writes OUT/own-data.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from mnist_dist.data import sources

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import machine  # noqa: E402  (bench/run.py: the CPU and its flags, recorded with every figure)

ROOT = Path(__file__).resolve().parents[1]
FASHION = {0: "tee", 1: "trousers", 5: "sandal", 8: "handbag"}


def write_folder(root: Path, folder: Path, picks: dict, per_class: dict, make) -> None:
    for split in ("train", "test"):
        data = sources.load_idx(folder, split)
        for label, name in picks.items():
            (root / split / name).mkdir(parents=True)
            chosen = data.images[data.labels == label][: per_class[split]]
            for i, x in enumerate(chosen):
                make(Image.fromarray(x.numpy())).save(root / split / name / f"{i:05d}.png")


def dark_on_white_64(digit: Image.Image) -> Image.Image:
    page = Image.new("L", (64, 64), 255)
    page.paste(Image.eval(digit.resize((44, 44), Image.BICUBIC), lambda v: 255 - v), (14, 4))
    return page


def train(recipe: str, folder: Path, run_dir: Path, seed: int) -> dict:
    cmd = [str(Path(sys.executable).with_name("mnist-dist")), "train", "--config", recipe, "data.name=imagefolder",
           f"data.dir={folder}", f"train.seed={seed}", f"run.dir={run_dir}", "train.progress=false"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    s = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "test_accuracy": s["test_accuracy"], "test_count": s["test_count"],
            "train_seconds": round(s["train_seconds"], 1), "wall_seconds": round(wall, 1),
            "startup_seconds": round(s.get("startup_seconds") or 0, 1), "classes": s["classes"],
            "pixel_stats": s["pixel_stats"], "mixed_precision": s["mixed_precision"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--mnist-dir", default=str(ROOT / "data" / "mnist"))
    p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "sets": {}}
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        sets = {
            "fashion4": ("fast_fashion", args.fashion_dir, FASHION, {"train": 6000, "test": 1000}, lambda x: x),
            "digits64": ("fast_mnist", args.mnist_dir, {d: str(d) for d in range(10)}, {"train": 2000, "test": 2000},
                         dark_on_white_64),
        }
        for name, (recipe, source, picks, per_class, make) in sets.items():
            folder = work_dir / name
            write_folder(folder, Path(source), picks, per_class, make)
            runs = [train(recipe, folder, work_dir / f"{name}-{seed}", seed) for seed in seeds]
            result["sets"][name] = {"recipe": recipe, "runs": runs}
            for r in runs:
                print(f"{name:9s} {recipe:12s} seed {r['seed']}: test accuracy {r['test_accuracy']:.4f} on "
                      f"{r['test_count']:,} images, train {r['train_seconds']} s, whole process {r['wall_seconds']} s "
                      f"({r['mixed_precision']})", flush=True)
    print(f"CPU: {result['machine']['cpu_model']} {' '.join(result['machine']['cpu_flags'])}")
    out = Path(args.out) / "own-data.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
