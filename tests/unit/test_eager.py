"""mnist_dist.eager's optimizers are torch.optim's without the torch._dynamo import: after the same steps they hold
the same weights bit for bit, their state_dicts are the same and load into each other, and building, stepping and
checkpointing one imports neither torch._dynamo nor sympy."""

import pytest
import torch

from mnist_dist import config, eager, train

CASES = [  # (eager class, torch.optim class, kwargs): every optimizer make_optimizer builds, fused or not
    (eager.SGD, torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    (eager.Adam, torch.optim.Adam, {"weight_decay": 5e-4}),
    (eager.AdamW, torch.optim.AdamW, {"weight_decay": 5e-4}),
]


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))


def train_steps(model, optimizer, scheduler, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def build(cls, kwargs, fused: bool, seed: int = 0):
    model = tiny_model(seed)
    optimizer = cls(model.parameters(), lr=0.01, fused=fused, **kwargs)
    return model, optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=20)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert a["state"][key].keys() == b["state"][key].keys()
        for name, value in a["state"][key].items():
            assert torch.equal(value, b["state"][key][name]), (key, name)


@pytest.mark.parametrize("fused", [False, True], ids=["loop", "fused"])
@pytest.mark.parametrize("ours, theirs, kwargs", CASES, ids=[c[1].__name__ for c in CASES])
def test_the_same_weights_and_state_as_torch_optim(ours, theirs, kwargs, fused):
    runs = [build(cls, kwargs, fused) for cls in (ours, theirs)]
    for model, optimizer, scheduler in runs:
        train_steps(model, optimizer, scheduler, 6)
    (m1, o1, _), (m2, o2, _) = runs
    for p1, p2 in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2)
    assert_same_state(o1.state_dict(), o2.state_dict())
    assert isinstance(o1, theirs) and type(o1).__name__ == theirs.__name__


@pytest.mark.parametrize("ours, theirs, kwargs", CASES, ids=[c[1].__name__ for c in CASES])
def test_a_checkpoint_loads_either_way_and_training_goes_on_the_same(ours, theirs, kwargs):
    """torch.optim's state into ours and ours into torch.optim's: a checkpoint from before this module still
    resumes, and one written now resumes without it."""
    sources = {cls: build(cls, kwargs, fused=False) for cls in (ours, theirs)}
    for model, optimizer, scheduler in sources.values():
        train_steps(model, optimizer, scheduler, 3)
    resumed = []
    for src, dst in ((theirs, ours), (ours, theirs)):
        model, optimizer, scheduler = build(dst, kwargs, fused=False, seed=1)
        model.load_state_dict(sources[src][0].state_dict())
        optimizer.load_state_dict(sources[src][1].state_dict())
        scheduler.load_state_dict(sources[src][2].state_dict())
        train_steps(model, optimizer, scheduler, 3, start=3)
        resumed.append((model, optimizer))
    for p1, p2 in zip(resumed[0][0].state_dict().values(), resumed[1][0].state_dict().values(), strict=True):
        assert torch.equal(p1, p2)
    assert_same_state(resumed[0][1].state_dict(), resumed[1][1].state_dict())


def test_make_optimizer_builds_these_classes():
    for name in ("sgd", "adam", "adamw"):
        optimizer = train.make_optimizer(config.TrainConfig(optimizer=name), tiny_model(0).parameters())
        assert type(optimizer) in (eager.SGD, eager.Adam, eager.AdamW)
