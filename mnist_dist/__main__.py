"""`python -m mnist_dist COMMAND ...`: the same as `mnist-dist COMMAND ...`. Also the launch entry of an installed
wheel, where there is no train_accel.py: `accelerate launch -m mnist_dist train ...`, `torchrun -m mnist_dist train`."""

import sys

from mnist_dist.cli import main

if __name__ == "__main__":
    sys.exit(main())
