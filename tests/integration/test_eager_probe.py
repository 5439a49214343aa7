"""Building, stepping and checkpointing mnist_dist.eager's optimizers imports neither torch._dynamo nor sympy, seen
in a fresh interpreter (the bit-for-bit equality with torch.optim is tests/unit/test_eager.py)."""
import sys

import torch

from mnist_dist import eager

from helpers import run

CASES = [  # (eager class, torch.optim class, kwargs): every optimizer make_optimizer builds, fused or not
    (eager.SGD, torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    (eager.Adam, torch.optim.Adam, {"weight_decay": 5e-4}),
    (eager.AdamW, torch.optim.AdamW, {"weight_decay": 5e-4}),
]




PROBE = """
import sys, torch
from mnist_dist import config, train
model = torch.nn.Linear(4, 2)
for name in ("sgd", "adam", "adamw"):
    optimizer = train.make_optimizer(config.TrainConfig(optimizer=name), model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    optimizer.load_state_dict(optimizer.state_dict())
print(sorted(m for m in ("torch._dynamo", "sympy", "triton") if m in sys.modules))
"""


def test_building_stepping_and_checkpointing_import_no_dynamo():
    proc = run([sys.executable, "-c", PROBE], timeout=120)
    assert proc.stdout.strip() == "[]"
