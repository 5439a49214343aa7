"""Thin entry point: `accelerate launch train_accel.py [--config configs/train/X.yaml] [key=value ...]`.

Same as `mnist-dist train ...`; all the work is in mnist_dist/train.py.
"""
import sys

from mnist_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
