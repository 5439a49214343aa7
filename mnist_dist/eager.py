"""torch.optim's SGD, Adam and AdamW without importing torch._dynamo: the same arithmetic, ~1.5 s less start-up.

Why: in torch 2.14 every optimizer imports torch._dynamo (and with it sympy, and Triton on a CUDA wheel) the first
time it is built or stepped, although a run that compiles nothing never needs it:
- Optimizer.add_param_group (called by __init__), zero_grad, state_dict and load_state_dict are wrapped by
  torch._disable_dynamo, which imports dynamo on the first call to build its disabled twin;
- step is wrapped by optim.optimizer._use_grad_for_differentiable, which imports dynamo on every call for two
  torch._dynamo.graph_break() calls (they matter only while dynamo traces the step).
Accelerate's unwrap_model asks hasattr(torch, "_dynamo"), which imports it, to see whether a model is compiled.
The classes here call the undecorated functions (the decorators keep them in __wrapped__) and set grad mode as
_use_grad does. They are only ever called eagerly: the loop compiles the model alone, never the optimizer step.
Everything else is inherited: the step hooks, the fused and foreach kernels, and the state_dict format (a checkpoint
from torch.optim loads here and the other way round). tests/unit/test_eager.py holds them to torch.optim bit for bit.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:  # the type only: accelerate is imported where it is built
    from accelerate import Accelerator

_UNWRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_O = TypeVar("_O", bound=torch.optim.Optimizer)


def _without_dynamo(base: type[_O]) -> type[_O]:  # a subclass of base: it takes base's arguments
    real_step = inspect.unwrap(base.step)

    def step(self, closure=None):
        # _use_grad_for_differentiable less its torch._dynamo.graph_break() calls (no-ops outside a trace).
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return real_step(self, closure)
        finally:
            torch.set_grad_enabled(prev)

    methods = {name: inspect.unwrap(getattr(base, name)) for name in _UNWRAPPED}
    # The same class name: the profiler's "Optimizer.step#AdamW.step" and repr() read as torch.optim's.
    return type(base.__name__, (base,), {"step": step, "__module__": __name__, **methods})


SGD = _without_dynamo(torch.optim.SGD)
Adam = _without_dynamo(torch.optim.Adam)
AdamW = _without_dynamo(torch.optim.AdamW)


def unwrap_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """accelerator.unwrap_model without importing torch._dynamo (and FSDP, which sharded launches never reach):
    a model cannot be compiled while dynamo was never imported, so only DDP's wrapper is left to take off."""
    if "torch._dynamo" in sys.modules:
        return accelerator.unwrap_model(model)
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model
