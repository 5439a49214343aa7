"""Unit tests run in this process: a test here that starts a process (a CLI run, a launcher, a probe interpreter)
fails at once and belongs in tests/integration/."""
import subprocess

import pytest


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"a unit test started a process ({args!r}): move it to tests/integration/")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
