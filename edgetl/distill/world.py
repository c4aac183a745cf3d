"""Distillation's processes and batches: the torchrun world (one process, or DDP over gloo/nccl), the global
batches every rank draws alike and shards, and evaluation summed over the ranks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetl.artifact import InputSpec
from edgetl.data import ImageSet, prepare
from edgetl.errors import ConfigError

__all__ = ["Inputs", "World", "average_grads", "evaluate", "global_batches", "join_world", "raw", "shard",
           "steps_per_epoch", "wrap"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def join_world(device: str) -> World:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else a world of one."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local)
    if size <= 1:
        return World(device=dev)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=dev, owns_group=owns)


# --------------------------------------------------------------------------- data
def raw(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def global_batches(n: int, batch_size: int, seed: int, world: int) -> Iterator[torch.Tensor]:
    """The epoch's global batches (same on every rank); a final batch too small to give each rank a sample
    is dropped, so that all ranks always step together."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if len(idx) >= world:
            yield idx


def shard(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    lo, hi = rank * len(idx) // world, (rank + 1) * len(idx) // world
    return idx[lo:hi]


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


class Inputs:
    """One batch of raw images turned into each model's input, computed once per distinct input spec."""

    def __init__(self, raw: torch.Tensor, device: torch.device) -> None:
        self.raw, self.device, self._cache = raw, device, {}

    def __call__(self, spec: InputSpec) -> torch.Tensor:
        if spec not in self._cache:
            self._cache[spec] = prepare(self.raw, spec).to(self.device, non_blocking=True)
        return self._cache[spec]


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, spec: InputSpec, world: World, *, batch_size: int = 256,
              map_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy over ``data``, each rank taking one contiguous shard."""
    was = model.training
    model.eval()
    idx = shard(torch.arange(len(data)), world.rank, world.size)
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(idx), batch_size):
        j = idx[i : i + batch_size]
        x = prepare(data.images[j], spec).to(world.device)
        y = data.labels[j].to(world.device)
        out = model(x).float()
        if map_fn is not None:
            out = map_fn(out)
        sums += torch.tensor([float((out.argmax(1) == y).sum()), float(F.cross_entropy(out, y, reduction="sum")),
                              float(len(j))], dtype=torch.float64)
    model.train(was)
    sums = world.all_sum(sums.to(world.device) if world.device.type == "cuda" else sums).cpu()
    n = max(float(sums[2]), 1.0)
    return {"accuracy": float(sums[0]) / n, "loss": float(sums[1]) / n, "samples": int(sums[2])}


def wrap(student: nn.Module, world: World):
    if world.size <= 1:
        return student
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [world.device.index] if world.device.type == "cuda" else None
    # broadcast_buffers=False: BatchNorm buffers stay per rank (standard DDP); all ranks start equal anyway.
    return DDP(student, device_ids=ids, broadcast_buffers=False)


def average_grads(params, world: World) -> None:
    for p in params:
        if p.grad is not None:
            world.all_sum(p.grad)
            p.grad /= world.size
