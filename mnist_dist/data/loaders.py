"""The batches of training and evaluation: the on-device transforms (normalize, augment), the two training
loaders (uint8 tensors batched on the device, or PyTorch's DataLoader) and each rank's share of an evaluation.

A loader yields one item per optimizer step: (micro_batches, scale). micro_batches is this rank's list of (uint8
images, labels); the loop multiplies each micro-batch's *summed* loss by `scale` so that, after DDP averages
gradients over ranks, the gradient is the mean over the samples of the step. Nothing here touches the
Accelerator: the loop passes in rank, world size and device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.data

from mnist_dist.data.sources import Split

# ----------------------------------------------------------------------------- on-device transforms


def normalize(
    images_u8: torch.Tensor, mean: float, std: float, dtype=torch.float32
) -> torch.Tensor:
    """uint8 [B, 28, 28] -> normalised float [B, 1, 28, 28], on whatever device the images are."""
    return ((images_u8.to(dtype) / 255.0 - mean) / std).unsqueeze(1)


def augment(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation (up to max_shift px), rotation (+-10 deg) and scale (0.9-1.1), batched. No flips:
    a mirrored 2 is not a 2. The background is the normalised zero pixel, so padding uses x.min()."""
    b = x.shape[0]
    r = torch.rand(b, 4, generator=generator, device=generator.device).to(x.device, x.dtype)
    angle = (r[:, 0] - 0.5) * (2 * math.pi * 10 / 180)
    scale = 0.9 + 0.2 * r[:, 1]
    shift = (r[:, 2:] - 0.5) * (2 * 2 * max_shift / 28)  # in affine_grid units: [-1, 1] spans 28 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = x.amin()
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


# ----------------------------------------------------------------------------- loaders


class DeviceLoader:
    """One split held as uint8 tensors on the device; each epoch a seeded permutation is cut into global
    steps of world_size * per_device_batch_size * accum samples and each step is split exactly across ranks.

    Every sample is used once per epoch across all ranks (a last step with fewer samples than ranks is
    dropped); the order depends only on (seed, epoch, world size), so a resumed run sees the same batches.
    """

    def __init__(
        self,
        split: Split,
        per_device_batch_size: int,
        accum: int,
        rank: int,
        world_size: int,
        seed: int,
        device,
    ):
        self.split = split.to(device)
        self.batch, self.accum, self.rank, self.world, self.seed = (
            per_device_batch_size,
            accum,
            rank,
            world_size,
            seed,
        )
        # every rank and micro-batch
        self.global_samples_per_step = per_device_batch_size * accum * world_size
        n = len(split)
        tail = n % self.global_samples_per_step
        self.steps_per_epoch = n // self.global_samples_per_step + (1 if tail >= world_size else 0)

    def __len__(self):
        return self.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0):
        perm = epoch_permutation(len(self.split), self.seed, epoch).to(self.split.images.device)
        for step in range(start_step, self.steps_per_epoch):
            chunk = perm[
                step * self.global_samples_per_step : (step + 1) * self.global_samples_per_step
            ]
            lo, hi = (
                self.rank * len(chunk) // self.world,
                (self.rank + 1) * len(chunk) // self.world,
            )
            mine = chunk[lo:hi]
            micro = [(self.split.images[i], self.split.labels[i]) for i in mine.split(self.batch)]
            yield micro, self.world / len(chunk)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: made on the CPU from (seed, epoch) alone, identical on every rank and device,
    and the same again after a resume."""
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(torch_seed(seed * 100_003 + epoch))
    )


def torch_seed(mixed: int) -> int:
    """A seed mixed from train.seed (< 2^63) and a counter, folded into the range torch accepts (below 2^64): the
    identity below it, so every run whose mix fits keeps its numbers."""
    return mixed % 2**64


class EpochSampler(torch.utils.data.Sampler):
    """DataLoader's sampler: epoch_permutation of the epoch set by set_epoch (a shuffle=True sampler draws from
    one generator that runs on across epochs, so after a resume its order was not the interrupted epoch's)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_permutation(self.n, self.seed, self.epoch).tolist())

    def __len__(self):
        return self.n


class TorchLoader:
    """The standard PyTorch DataLoader (per-sample indexing + collate), sharded by Accelerate's prepare()."""

    def __init__(
        self,
        split: Split,
        per_device_batch_size: int,
        accum: int,
        seed: int,
        num_workers: int,
        prepare,
    ):
        from torch.utils.data import DataLoader, TensorDataset

        self.sampler = EpochSampler(len(split), seed)
        dl = DataLoader(
            TensorDataset(split.images, split.labels),
            batch_size=per_device_batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )
        self.dl, self.accum = prepare(dl), accum
        self.steps_per_epoch = math.ceil(len(self.dl) / accum)

    def __len__(self):
        return self.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0):
        from accelerate import skip_first_batches

        # Before the skip, and through Accelerate's loader: its __iter__ sets the sampler's epoch to its own
        # iteration count, which skip_first_batches copies into the new loader.
        self.sampler.set_epoch(epoch)
        if hasattr(self.dl, "set_epoch"):
            self.dl.set_epoch(epoch)
        dl = skip_first_batches(self.dl, start_step * self.accum) if start_step else self.dl
        micro = []
        for x, y in dl:
            micro.append((x, y))
            if len(micro) == self.accum:
                yield micro, 1.0 / (len(x) * self.accum)  # per-rank mean; DDP averages ranks
                micro = []
        if micro:
            yield micro, 1.0 / (len(micro[0][0]) * len(micro))


def eval_shard(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of an evaluation split: no padding, no duplicates, shares sum to n."""
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def eval_shard_max(n: int, world_size: int) -> int:
    """The largest share eval_shard gives any rank (the shares differ by at most one image)."""
    return -(-n // world_size)
