"""runtime.keep_freed_memory: glibc takes both malloc settings (big blocks from the heap, freed heap kept), and a C
library without mallopt is left as it is, without an error (the speed it buys is measured in bench/, not here)."""
import ctypes
import platform

import pytest

from mnist_dist.train import runtime


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_both_settings():
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True  # again, as a second Accelerator in one process would


def test_a_libc_without_mallopt_is_left_alone(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert runtime.keep_freed_memory() is False
