"""Fault injection for the tests, kept out of the training code: Python imports this module at start-up when its
folder is on PYTHONPATH.
- MNIST_DIST_INJECT_FAULT=RANK:STEP makes that rank's train_step raise at that global step; RANK:STEP:ATTEMPT only
  on that attempt of torchrun's elastic agent (TORCHELASTIC_RESTART_COUNT, 0 for the first), so that the
  restarted workers run through. Several faults: comma-separated (1:30:0,1:35:1 fails attempts 0 and 1).
- MNIST_DIST_FILL_DISK=1 fills the run folder's filesystem (a real full disk: a file grown until ENOSPC) just
  before the main process saves the final model."""
import os

_specs = [spec for spec in os.environ.get("MNIST_DIST_INJECT_FAULT", "").split(",") if spec]
if _specs and "RANK" in os.environ:  # a training process under a launcher, not the launcher itself
    _this_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    _steps = set()
    for _spec in _specs:
        _rank, _step, *_attempt = (int(part) for part in _spec.split(":"))
        if int(os.environ["RANK"]) == _rank and (not _attempt or _attempt[0] == _this_attempt):
            _steps.add(_step)
    if _steps:
        from mnist_dist.train import loop

        _original = loop.train_step

        def _train_step(parts, state, *args):
            if state.global_step in _steps:
                raise RuntimeError(f"injected fault on rank {os.environ['RANK']} (MNIST_DIST_INJECT_FAULT)")
            return _original(parts, state, *args)

        loop.train_step = _train_step

if os.environ.get("MNIST_DIST_FILL_DISK"):
    from mnist_dist.train import writer

    _finish = writer.RunWriter.finish

    def _finish_on_a_full_disk(self, *args):
        with (self.run_dir / "filler").open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:  # ENOSPC: the disk is full now
                pass
        return _finish(self, *args)

    writer.RunWriter.finish = _finish_on_a_full_disk
