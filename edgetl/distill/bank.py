"""The teachers' mixed soft targets, with the un-augmented view's logits cached per training image."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgetl.data import ImageSet
from edgetl.distill.teachers import Teacher
from edgetl.distill.world import Inputs, World, raw, shard
from edgetl.progress import task

__all__ = ["TeacherBank"]


class TeacherBank:
    """The teachers' mixed soft targets. The un-augmented view's logits are cached per training image
    (teachers are frozen, so they never change) unless the cache would be large (big datasets)."""

    CACHE_BYTES = 256 * 2**20

    def __init__(self, teachers: list[Teacher], n_train: int, k: int, device: torch.device) -> None:
        self.teachers = teachers
        self.weights: list[float] = [1.0 / len(teachers)] * len(teachers)
        size = len(teachers) * n_train * k * 4
        self.cache = torch.zeros(len(teachers), n_train, k, device=device) if size <= self.CACHE_BYTES else None
        self.filled = torch.zeros(n_train, dtype=torch.bool)

    def logits(self, inputs: Inputs) -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.mapped(t.model(inputs(t.artifact.input_spec)).float()) for t in self.teachers]

    def original_logits(self, idx: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        """``[teachers, n, classes]`` logits of the un-augmented images ``idx`` (given as ``inputs``)."""
        if self.cache is None:
            return torch.stack(self.logits(inputs))
        missing = ~self.filled[idx]
        if bool(missing.any()):
            sub = Inputs(inputs.raw[missing], inputs.device)
            rows = idx[missing].to(self.cache.device)
            for i, out in enumerate(self.logits(sub)):
                self.cache[i, rows] = out
            self.filled[idx] = True
        return self.cache[:, idx.to(self.cache.device)]

    def targets(self, logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
        return sum(w * F.softmax(lg / temperature, dim=-1) for w, lg in zip(self.weights, logits, strict=True))

    def agreement(self, data: ImageSet, world: World, batch_size: int = 256) -> list[float]:
        """Each teacher's accuracy on the labelled training split (each rank its shard; filling the cache)."""
        idx = shard(torch.arange(len(data)), world.rank, world.size)
        correct = torch.zeros(len(self.teachers), dtype=torch.float64)
        with task("teacher agreement", len(idx)) if world.main else contextlib.nullcontext() as bar:
            for i in range(0, len(idx), batch_size):
                j = idx[i : i + batch_size]
                out = self.original_logits(j, Inputs(raw(data.images[j]), world.device))
                y = data.labels[j].to(out.device)
                correct += (out.argmax(-1) == y).sum(-1).double().cpu()
                if bar is not None:
                    bar.advance(len(j))
        if world.size > 1:
            correct = world.all_sum(correct.to(world.device)).cpu()
        if self.cache is not None and world.size > 1:  # the other ranks' rows were computed there
            self.filled[:] = False
            self.filled[idx] = True
        return [float(c) / len(data) for c in correct]
