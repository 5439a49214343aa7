"""`python -m mnist_dist.config --reference > docs/configuration.md`: the generated config reference."""

import sys

from mnist_dist.config import reference

if sys.argv[1:] != ["--reference"]:
    sys.exit("usage: python -m mnist_dist.config --reference > docs/configuration.md")
sys.stdout.write(reference())
