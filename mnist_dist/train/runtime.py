"""The process's distributed runtime: building the Accelerator (device, mixed precision, the process group),
preparing the loop's objects, and tearing the process group down. Gradients travel through the process group's
own engine (gloo on CPUs, NCCL on GPUs), as Accelerate's DDP sets it up.

Everything that decides how processes talk to each other is here; the loop only calls what it builds. How a run
stops early is stopping's.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING

import torch

from mnist_dist import config
from mnist_dist.errors import PeerLost, UserError

if TYPE_CHECKING:  # the type only: accelerate is imported where it is built
    from accelerate import Accelerator

# What gloo says when the other end of a collective has died (its TCP connection reset or closed).
GLOO_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


# Sharded and model-parallel strategies, as `accelerate launch` (--use_fsdp, --use_deepspeed, --use_megatron_lm, or
# a YAML's distributed_type) tells its workers: the environment it sets (accelerate/utils/launch.py).
SHARDED_LAUNCHES = {
    "FSDP": "FSDP",
    "DEEPSPEED": "DeepSpeed",
    "MEGATRON_LM": "Megatron-LM",
}  # ACCELERATE_USE_*
# ParallelismConfig sizes (--parallelism_config_*), where any above 1 shards the model or splits its layers.
SHARDED_SIZES = ("dp_shard", "tp", "cp", "sp")  # PARALLELISM_CONFIG_*_SIZE


def refuse_sharded_launch(env=os.environ) -> None:
    """A launch that asked for FSDP, DeepSpeed, Megatron-LM or tensor/context parallelism stops here, before any
    work: the models here (0.1-2 M parameters) gain nothing from sharding, and on a CPU Accelerate would silently
    drop the strategy and run plain DDP instead. Data parallelism (DDP) is what every launch runs."""
    yes = ("1", "true", "yes", "y", "on", "t")
    asked = [
        name
        for v, name in SHARDED_LAUNCHES.items()
        if env.get(f"ACCELERATE_USE_{v}", "").lower() in yes
    ]
    sizes = {
        name: env.get(f"PARALLELISM_CONFIG_{name.upper()}_SIZE", "1").strip()
        for name in SHARDED_SIZES
    }
    asked += [f"{name}_size={size}" for name, size in sizes.items() if size not in ("", "1")]
    if asked:
        if env.get("RANK", "0") != "0":
            # every rank decides the same from the same environment: rank 0 says why, once
            raise SystemExit(2)
        raise UserError(
            f"the launch asked for {' and '.join(asked)}, which mnist-dist does not run: models this small "
            f"(at most a few million parameters) gain nothing from sharding, and on a CPU Accelerate "
            f"would silently run plain DDP instead. Launch DDP: accelerate launch --config_file "
            f"configs/accelerate/multi_gpu.yaml (GPUs) or configs/accelerate/cpu_ddp2.yaml (CPUs)"
        )


def cpu_bf16_features() -> list[str]:
    """This CPU's native bf16 arithmetic, as torch's cpuinfo sees it (torch.cpu.get_capabilities; a torch without
    it: none): AVX512-BF16 dot products, AMX tiles (oneDNN runs bf16 convolutions and matmuls on them)."""
    capabilities: dict = getattr(torch.cpu, "get_capabilities", dict)()
    return [name for name in ("avx512_bf16", "amx_bf16") if capabilities.get(name)]


def choose_mixed_precision(
    asked: str, on_cpu: bool, launcher: str | None, cpu_bf16: list[str]
) -> tuple[str, str]:
    """(the precision to run: no, bf16 or fp16, and why) for train.mixed_precision=`asked`. launcher: what
    `accelerate launch` said (ACCELERATE_MIXED_PRECISION, from --mixed_precision or its YAML), None without one.
    `accelerate launch` says `no` whenever nothing asked for a precision, so its `no` is not a choice: auto follows
    a launch's bf16 or fp16 only. Otherwise, on a CPU, bf16 autocast where the CPU has native bf16 (1.3-1.4x faster
    at the same accuracy, bench/README.md), fp32 elsewhere; fp32 on a GPU."""
    if asked != "auto":
        return asked, f"train.mixed_precision={asked}"
    if launcher not in (None, "no"):
        return launcher, f"auto: the launch says {launcher}"
    if not on_cpu:
        return "no", "auto: fp32 on a GPU unless the launch says bf16 or fp16"
    if cpu_bf16:
        return "bf16", f"auto: this CPU has native bf16 ({', '.join(cpu_bf16)})"
    return "no", "auto: this CPU has no native bf16 (avx512_bf16, amx)"


def mixed_precision_choice(cfg: config.Config, on_cpu: bool) -> tuple[str, str]:
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() or None
    return choose_mixed_precision(
        cfg.train.mixed_precision, on_cpu, launcher, cpu_bf16_features() if on_cpu else []
    )


def keep_freed_memory() -> bool:
    """glibc malloc: serve blocks up to 32 MB from the heap and keep up to 1 GB of freed heap, instead of an
    mmap/munmap per tensor: each training step frees and reallocates its activations and gradients (a few MB each
    on a CPU), and every fresh mapping is zero-filled by the kernel page by page. Measured with bench/throughput.py
    (fast_fashion, 2-core Xeon): 10.6k -> 18.9k images/s in bf16, 7.0k -> 10.3k in fp32; the arithmetic is the same.
    The cost: the process keeps its peak memory instead of returning it. False where there is no glibc."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # macOS, Windows, musl
        return False
    return bool(mallopt(m_mmap_threshold, 32 << 20)) & bool(mallopt(m_trim_threshold, 1 << 30))


def make_accelerator(cfg: config.Config) -> Accelerator:
    refuse_sharded_launch()  # before anything is built or read
    keep_freed_memory()
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    want, cuda, mps = cfg.train.device, torch.cuda.is_available(), torch.backends.mps.is_available()
    if want == "cuda" and not cuda:
        raise UserError(
            "train.device=cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver), "
            "or use train.device=auto"
        )
    if want == "mps" and not mps:
        raise UserError(
            "train.device=mps but MPS is not available on this machine; use train.device=auto"
        )
    # Without CUDA or MPS, cpu=True is what makes a multi-process launch real DDP over gloo; a plain
    # Accelerator() would run N independent single-process copies.
    cpu = want == "cpu" or (want == "auto" and not cuda and not mps)
    mp, _ = mixed_precision_choice(cfg, cpu)
    if mp == "fp16" and cpu:
        # `accelerate launch --mixed_precision fp16` says it through the environment; on a CPU nothing would run
        # in fp16 although summary.json would record it.
        asked = cfg.train.mixed_precision == "fp16"
        who = "train.mixed_precision=fp16" if asked else "accelerate launch --mixed_precision fp16"
        raise UserError(f"{who} needs a GPU; on CPU use bf16 or no")
    init_elastic_process_group(cpu, timedelta(seconds=cfg.run.dist_timeout_s))
    return Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        # We step the scheduler once per optimizer step ourselves (Accelerate would step it world_size times).
        step_scheduler_with_optimizer=False,
        # A rank that dies takes the launcher down with it; this bounds how long the others wait otherwise.
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.run.dist_timeout_s)),
            # No per-step broadcast of BN running stats (a collective per forward, ~6% of a CPU DDP
            # step): only evaluation reads them, and metrics.exact_metrics() gives every rank rank 0's first.
            # Gradients that are views into DDP's buckets: no copy in and out of them per step.
            DistributedDataParallelKwargs(broadcast_buffers=False, gradient_as_bucket_view=True),
        ],
    )


def init_elastic_process_group(cpu: bool, timeout: timedelta) -> None:
    """The process group under torchrun's elastic agent, on store keys of this attempt's own.

    With the c10d rendezvous (`--rdzv-backend c10d`) the agent serves one TCPStore for every restart (its TCPStore
    sharing: torch/distributed/elastic/rendezvous/dynamic_rendezvous.py, next_rendezvous), and the workers use it
    as it is, with no per-attempt prefix. A restarted group then finds the dead group's keys (gloo's peer
    addresses, the start-up barrier's counters): it connects to processes that are gone, or waits forever in
    init_process_group. Accelerate uses a process group that already exists, so we make it here, the same one it
    would make (gloo on CPUs, NCCL on CUDA), on keys under mnist-dist/attempt_<TORCHELASTIC_RESTART_COUNT>."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("WORLD_SIZE", "1")) < 2:
        return
    if env.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0"):
        # A first attempt's store holds no dead group's keys: Accelerate's own start-up, as every launch had before.
        # (Two CI runs saw a rank abort at exit, 'terminate called without an active exception', in 2-process runs
        # started through this function; restarts need it.)
        return
    backend = "gloo" if cpu else "nccl" if torch.cuda.is_available() else None
    if backend is None or torch.distributed.is_initialized():
        return  # another accelerator: Accelerate's own start-up
    rank, world, address = int(env["RANK"]), int(env["WORLD_SIZE"]), env["MASTER_ADDR"]
    dist = torch.distributed
    agent_store = dist.TCPStore(
        address, int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    store = dist.PrefixStore(attempt_prefix(env["TORCHELASTIC_RESTART_COUNT"]), agent_store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def attempt_prefix(restart_count: str) -> str:
    """The store keys of one attempt of the elastic agent: a restarted group never reads the dead group's."""
    return f"mnist-dist/attempt_{restart_count}"


def elastic_restart_count() -> int | None:
    """Which attempt of torchrun's elastic agent this is (0 for the first; TORCHELASTIC_RESTART_COUNT), or None
    outside one (accelerate launch runs the same agent)."""
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return int(count) if count is not None and count.isdigit() else None


def prepare(accelerator: Accelerator, *objects):
    """accelerator.prepare, without torch 2.14's warning that DDP's broadcast_buffers is renamed
    forward_sync_buffers (Accelerate cannot pass the new name yet; what we ask for, no buffer broadcast per
    forward, is the same under both, and the warning, twice per rank on every DDP run, would only alarm)."""
    # Where to put each object, said here as Accelerate would decide it for a model without DTensor parameters
    # (ours never have any, and sharded launches are refused): its own decision asks model_has_dtensor, whose
    # import of torch.distributed.tensor (and sympy) costs ~0.4 s of every start-up.
    placement = [accelerator.device_placement] * len(objects)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning
        )
        return accelerator.prepare(*objects, device_placement=placement)


def end_distributed(accelerator: Accelerator, wait: bool = True) -> None:
    """Tear the process group down. wait: every rank arrives first (a rank that destroys it while another still
    works, writing files or requeueing, can abort with gloo's 'terminate called without an active exception').
    After an error on this rank alone the others may never arrive: then leave at once and let the launcher end
    the job."""
    if wait:
        accelerator.wait_for_everyone()
    accelerator.end_training()


def allreduce_backend(accelerator: Accelerator) -> str:
    """Which engine averages the gradients: the process group's backend (gloo, nccl), or none in one process."""
    return torch.distributed.get_backend() if accelerator.num_processes > 1 else "none"


def hostnames(accelerator: Accelerator) -> list[str]:
    """A collective: every rank's host, in rank order."""
    from accelerate.utils import gather_object

    mine = [socket.gethostname()]
    return gather_object(mine) if accelerator.num_processes > 1 else mine


def since_start(unix_time: float | None) -> float | None:
    """Seconds from this process's start to `unix_time` (10 ms resolution on Linux), or None."""
    import psutil

    if unix_time is None:
        return None
    started = psutil.Process().create_time()
    if hasattr(time, "CLOCK_BOOTTIME"):
        # psutil adds the boot time in whole seconds (up to 1 s off): the process's age since boot is exact, and
        # the clock since boot gives its start on this clock.
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - (started - psutil.boot_time())
        started = time.time() - age
    return unix_time - started


def as_peer_lost(e: BaseException, rank: int) -> PeerLost | None:
    """The one-line error for a collective that failed because another rank died, else None."""
    if isinstance(e, PeerLost):
        return e
    text = str(e)
    if isinstance(e, RuntimeError) and any(s in text for s in GLOO_PEER_GONE):
        why = next(s for s in GLOO_PEER_GONE if s in text)
        return PeerLost(
            f"another rank is gone (gloo: {why.lower()}): rank {rank} stops too (resume from the last "
            f"checkpoint with the same run.dir)"
        )
    return None
