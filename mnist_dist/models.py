"""Plain nn.Modules and a registry. Imports only torch: distribution is applied from outside.

Every model takes a float tensor [B, 1, 28, 28] (already normalised) and returns logits [B, num_classes]
(10 unless the data have another number of classes: build's num_classes).
"""

import inspect
from collections.abc import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


def build(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Model `name` with `num_classes` outputs; kwargs are the config's model.kwargs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def check(name: str, kwargs: dict) -> str | None:
    """What is wrong with building model `name` from `kwargs`, as `name: ...` or `kwargs ...` words, or None. The
    model is built once on the meta device: no memory, no init work, and the global RNG the run seeds later is
    left alone."""
    if name not in MODELS:
        return f"name: unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}"
    if "num_classes" in kwargs:
        return "kwargs: num_classes comes from the data (its classes), not from model.kwargs"
    try:
        inspect.signature(MODELS[name]).bind(**kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(MODELS[name]).parameters if p != "num_classes"]
        known = ", ".join(params) or "none"
        return f"kwargs {kwargs} do not fit {name} ({e}); its arguments: {known}"
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            MODELS[name](**kwargs)
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        return f"kwargs {kwargs} cannot build {name} ({type(e).__name__}: {first})"
    return None


def at_least(**sizes: tuple[int, int]) -> None:
    """Layer sizes given as name=(value, least): each a whole number of at least `least`, or a ValueError."""
    for name, (n, least) in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {n!r}")


def mlp(*hidden: int, dropout: float = 0.0, num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# The MLPs the classic tutorials use (784 inputs, 10 outputs for the digits).
@register("mlp_128_256")
def mlp_128_256(dropout: float = 0.0, num_classes: int = 10):
    return mlp(128, 256, dropout=dropout, num_classes=num_classes)


@register("mlp_64x3")
def mlp_64x3(dropout: float = 0.0, num_classes: int = 10):
    return mlp(64, 64, 64, dropout=dropout, num_classes=num_classes)


@register("mlp_128")
def mlp_128(dropout: float = 0.0, num_classes: int = 10):
    return mlp(128, dropout=dropout, num_classes=num_classes)


@register("mlp_120_84")
def mlp_120_84(dropout: float = 0.0, num_classes: int = 10):
    return mlp(120, 84, dropout=dropout, num_classes=num_classes)


@register("tutorial_cnn")
def tutorial_cnn(num_classes: int = 10):
    """The conv32-pool-conv64-pool-fc64 CNN of the classic tutorials (no BatchNorm)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 26 -> 13
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 11 -> 5
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def stage(
    cin: int, cout: int, pool_first: bool, pool: str = "max", stride: int = 1
) -> list[nn.Module]:
    """conv-BN-ReLU then a 2x2 pool (max or avg); with pool_first conv -> pool -> BN -> ReLU, so BN and ReLU
    (memory-bound, about a quarter of a CPU step) run on a map 4x smaller. stride=2: the convolution halves the map
    itself and an Identity holds the pool's place (the same state-dict names either way)."""
    conv, norm, act = (
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
    shrink = nn.Identity() if stride > 1 else {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pool](2)
    if pool_first:
        return [nn.Sequential(conv, shrink, norm, act)]
    return [nn.Sequential(conv, norm, act), shrink]


@register("cnn_bn")
def cnn_bn(
    width: int = 32,
    dropout: float = 0.1,
    pool_first: bool = False,
    hidden: int = 0,
    pool: str = "max",
    stem_stride: int = 1,
    num_classes: int = 10,
):
    """Three conv-BN-ReLU-pool stages (28 -> 14 -> 7 -> 3) doubling the channels, linear head.

    `width` is the first stage's channel count. One conv per stage keeps it cheap on CPUs; the full-resolution
    stage has a single input channel. `pool_first` pools before BN and ReLU (+30% images/s on a 2-core CPU,
    bench/README.md); `hidden` > 0 puts a hidden fully-connected layer of that size in the head. `pool` is max or
    avg (average pooling and its gradient are cheaper on CPUs); `stem_stride=2` gives the first convolution a
    stride of 2 instead of a pool after it, so nothing runs on a 28x28 map of `width` channels.
    """
    # a layer of width 0 builds, and fails at its first forward
    at_least(width=(width, 1), hidden=(hidden, 0), stem_stride=(stem_stride, 1))
    if pool not in ("max", "avg") or stem_stride > 2:
        raise ValueError(
            f"pool must be max or avg and stem_stride 1 or 2, got pool={pool!r}, stem_stride={stem_stride}"
        )
    w1, w2, w3 = width, 2 * width, 4 * width
    head = (
        [nn.Linear(w3 * 3 * 3, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
        if hidden
        else [nn.Linear(w3 * 3 * 3, num_classes)]
    )
    return nn.Sequential(
        *stage(1, w1, pool_first, pool, stem_stride),  # 28 -> 14
        *stage(w1, w2, pool_first, pool),  # 14 -> 7
        *stage(w2, w3, pool_first, pool),  # 7 -> 3
        nn.Flatten(),
        nn.Dropout(dropout),
        *head,
    )


@register("cnn_fast")
def cnn_fast(
    width: int = 24,
    dropout: float = 0.0,
    pool_first: bool = True,
    hidden: int = 128,
    pool: str = "max",
    stem_stride: int = 1,
    num_classes: int = 10,
):
    """The default model: cnn_bn made cheaper for CPUs (bench/README.md): 24-48-96 channels, pooling before BN and
    ReLU, a 128-unit hidden layer in the head. Fashion-MNIST 92.8% in 8 epochs, ~2 minutes on 2 CPU cores."""
    return cnn_bn(width, dropout, pool_first, hidden, pool, stem_stride, num_classes)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":  # quick shape check: python -m mnist_dist.models
    x = torch.zeros(2, 1, 28, 28)
    for name in MODELS:
        m = build(name)
        print(f"{name:14s} {num_parameters(m):>9,d} params -> {tuple(m(x).shape)}")
