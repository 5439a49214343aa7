"""Fault injection for test_resume and test_elastic, kept out of the training code: Python imports this module at
start-up when its folder is on PYTHONPATH. MNIST_DIST_INJECT_FAULT=RANK:STEP makes that rank's train_step raise
at that global step; RANK:STEP:ATTEMPT only on that attempt of torchrun's elastic agent (TORCHELASTIC_RESTART_COUNT,
0 for the first), so that the restarted workers run through."""
import os

_spec = os.environ.get("MNIST_DIST_INJECT_FAULT")
if _spec and "RANK" in os.environ:  # a training process under a launcher, not the launcher itself
    _rank, _step, *_attempt = (int(part) for part in _spec.split(":"))
    _this_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if int(os.environ["RANK"]) == _rank and (not _attempt or _attempt[0] == _this_attempt):
        from mnist_dist.train import loop

        _original = loop.train_step

        def _train_step(loop, state, *args):
            if state.global_step == _step:
                raise RuntimeError(f"injected fault on rank {_rank} (MNIST_DIST_INJECT_FAULT)")
            return _original(loop, state, *args)

        loop.train_step = _train_step
