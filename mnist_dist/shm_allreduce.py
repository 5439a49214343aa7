"""Gradient averaging through shared memory, for multi-process DDP on the CPUs of one host.

Gloo moves DDP's gradients over loopback TCP. On a small CPU host that costs more than a second process gains:
measured on a 2-vCPU VM (bench/README.md), an all-reduce of 394 KB takes 2.1 ms and holding ranks in lock-step
another 1-3 ms, against a 36 ms step. Here each rank instead copies its gradient bucket into a file in /dev/shm
that every rank maps, raises its sequence number, spins until all ranks have raised theirs, and sums the slots
in rank order, so every rank gets the same bits. It is a DDP communication hook: DDP still buckets the
gradients and the process group still does everything else (the initial broadcast, metrics, barriers).

Valid only where stores become visible to other cores in program order (x86-64, TSO): a rank's gradient bytes
are then in memory before the sequence number that announces them. Elsewhere gloo stays.
"""

from __future__ import annotations

import mmap
import os
import platform
import secrets
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mnist_dist import procs
from mnist_dist.errors import PeerLost

# The memory-backed folder for the shared file; MNIST_DIST_SHM_DIR names another (a node with a small /dev/shm).
SHM_DIR = os.environ.get("MNIST_DIST_SHM_DIR", "/dev/shm")
CACHE_LINE = 64
PEER_CHECK_S = 0.2


def supported() -> bool:
    """The CPU orders stores as the hook needs (whether the ranks can share a file is found out by trying)."""
    return platform.machine().lower() in ("x86_64", "amd64")


class SharedMemoryAllReduce:
    """Mean over ranks of tensors of at most `max_bytes`, for ranks of the default process group on one host.

    Two slots per rank, used in turn: call k writes slot k % 2, and no rank can reach call k + 2 (the next write
    to that slot) before every rank has announced call k + 1, which each does only after reading call k's slots.
    """

    def __init__(self, max_bytes: int, timeout_s: float):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.timeout_s = timeout_s
        self.slot_bytes = -(-max_bytes // CACHE_LINE) * CACHE_LINE
        header = CACHE_LINE * self.world  # one sequence number per rank, each on its own cache line
        size = header + 2 * self.world * self.slot_bytes
        self.mm = self._map_shared_file(size)
        # Every rank's (pid, start time): the ranks share a host, so a wait can tell a dead peer from a slow one.
        self.peers: list[Any] = [
            None
        ] * self.world  # all_gather_object fills in each rank's (pid, start time)
        dist.all_gather_object(self.peers, procs.me())
        self.seq = np.frombuffer(self.mm, dtype=np.int64, count=header // 8).reshape(
            self.world, -1
        )[:, 0]
        self.slots = torch.frombuffer(
            self.mm, dtype=torch.uint8, offset=header, count=size - header
        ).view(2, self.world, self.slot_bytes)
        self.calls = 0

    def _map_shared_file(self, size: int) -> mmap.mmap:
        """Rank 0 creates the file with a random token at its end; every rank maps it and checks the token, so
        ranks on different hosts (or /dev/shm namespaces) are found out rather than given different memory. All
        ranks agree before any goes on: a failure on one is an OSError on all. The file is unlinked once every
        rank holds its mapping, so nothing is left behind, even after a crash."""
        shared: list[Any] = [None, secrets.token_bytes(16)]  # [file name, token]
        if self.rank == 0:
            try:
                fd, path = tempfile.mkstemp(prefix="mnist-dist-allreduce-", dir=SHM_DIR)
                os.ftruncate(fd, size)
                os.pwrite(fd, shared[1], size - len(shared[1]))
                os.close(fd)
                shared[0] = os.path.basename(path)
            except OSError:
                pass  # shared[0] stays None: every rank fails below
        dist.broadcast_object_list(shared, src=0)
        name, token = shared
        mm: mmap.mmap | None = None
        ok = False
        if name is not None:
            try:
                with open(os.path.join(SHM_DIR, name), "r+b") as f:
                    mm = mmap.mmap(f.fileno(), size)
                ok = mm[size - len(token) :] == token
            except OSError:
                pass
        flag = torch.tensor([int(ok)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if self.rank == 0 and name is not None:
            os.unlink(os.path.join(SHM_DIR, name))
        if not flag.item():
            if mm is not None:  # mapped, but not rank 0's file: let it go before falling back
                mm.close()
            raise OSError(
                f"the ranks could not share a file in {SHM_DIR} (not writable, full, or the processes "
                f"are not on one host)"
            )
        assert mm is not None  # every rank, this one too, mapped the file and found the token
        mm[size - len(token) :] = bytes(len(token))
        dist.barrier()  # nobody zeroes the token before everyone has checked it
        return mm

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """Replaces contiguous `t` with the mean over ranks of `t`; every rank must call with the same shape."""
        self.calls += 1
        k, nbytes = self.calls, t.numel() * t.element_size()
        slots = self.slots[k % 2, :, :nbytes].view(t.dtype)
        slots[self.rank].copy_(t.view(-1))
        self.seq[self.rank] = (
            k  # after the copy: TSO keeps the two stores in this order for other cores
        )
        self._wait_for_all(k)
        out = t.view(-1)
        if (
            self.world == 2
        ):  # a + b == b + a exactly: each rank adds the other's slot to its own gradient
            out.add_(slots[1 - self.rank])
        else:  # the same order on every rank: the same bits on every rank
            out.copy_(slots[0])
            for r in range(1, self.world):
                out.add_(slots[r])
        return t.div_(self.world)

    def _wait_for_all(self, k: int) -> None:
        # Spin: the wait is short (the ranks do the same work), and a sleep or futex costs more than it lasts here.
        # Yield every so often so that oversubscribed cores still let the late rank run; every PEER_CHECK_S of
        # waiting, make sure the late ranks still exist (a dead peer would otherwise hold this one at 100% CPU
        # until the timeout, deaf to the launcher's SIGTERM, which only sets the preemption flag).
        deadline, next_check, spins = None, None, 0
        while self.seq.min() < k:
            spins += 1
            if spins % 1024 == 0:
                os.sched_yield()
                now = time.monotonic()
                deadline, next_check = (
                    deadline or now + self.timeout_s,
                    next_check or now + PEER_CHECK_S,
                )
                late = [r for r in range(self.world) if self.seq[r] < k]
                if now > next_check:
                    next_check = now + PEER_CHECK_S
                    for r in late:
                        if not procs.alive(*self.peers[r]):
                            raise PeerLost(
                                f"rank {r} (pid {self.peers[r][0]}) is gone: rank {self.rank} stops too "
                                f"(resume from the last checkpoint with the same run.dir)"
                            )
                if now > deadline:
                    raise RuntimeError(
                        f"rank {self.rank} waited {self.timeout_s:.0f} s for the gradients of "
                        f"rank(s) {late}: a rank died or hangs"
                    )

    def hook(
        self, state, bucket
    ):  # no annotations: DDP rejects the string ones `annotations` would make
        """DDP communication hook (model.register_comm_hook(None, allreduce.hook))."""
        fut = torch.futures.Future()
        fut.set_result(self.mean_(bucket.buffer()))
        return fut
