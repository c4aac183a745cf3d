"""Reference samples of any model (named inputs, no labels) and the relevance seed on each of its outputs.

A classifier scored against labels seeds relevance at the true class (:class:`~edgetl.prune.relevance.
ReferenceSet`). Any other model is scored on its own predictions, on the outputs its contract selects
(``ModelContract.metric_outputs``: the ``--outputs`` named, else every output but recurrent state), by role:

- **logits, mask, sequence** (categorical): one-hot at the model's own predicted class (argmax over the class
  axis) at every position: per sample for logits, per pixel for a mask, per time step for a sequence. This is the
  paper's seed (Yeom et al. 2021, one-hot at the class) with the prediction in place of the label, and the
  per-pixel form used to explain semantic segmentation with LRP.
- **boxes, scores, embedding, other** (regression): the output's deviation from its mean over the reference set,
  ``R = f(x) - mean f``, as Letzgus et al. ("Toward explainable AI for regression models", IEEE Signal
  Processing Magazine 2022) argue a regression explanation must be relative to a reference value: seeding with
  ``f(x)`` itself would hand the relevance to whatever constant the output carries (a detector's anchor grid in
  pixel coordinates), not to what the network computes for this input.

A mask or a sequence gives every class the model predicts in the batch the same share of the seed (each of its
pixels or time steps ``1 / count``): seeded pixel by pixel, the background of a segmentation (87 % of the pixels
of the MNIST masks in the tests) takes almost all the relevance, and LRP then pruned the channels that find the
foreground first (mIoU against the unpruned model 0.43, all background, at 30 % of the channels, where four
random prunings kept 0.82-0.97). With the classes weighing the same, as they do in mIoU, LRP kept 0.84 at 30 % and
0.95 at 50 % (random: 0.56-0.91). A CTC blank is such a majority too.

Each selected output's seed is scaled so that its total absolute relevance is one per sample, so every head
weighs the same whatever its size (an H x W mask against a score per anchor).

Example::

    ref = InputReference.from_inputs(inputs, contract, limit=64, seed=0)
    seeding = ref.seeding(model)             # the reference means of the regression outputs
    for example, n in seeding.batches(16):
        out = model(*example)
        tensors, seeds = seeding.seed(out)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.contract import ModelContract, OutputTensor, Role
from edgetl.errors import ConfigError, DataError

__all__ = ["CATEGORICAL", "InputReference", "Seeding", "as_example", "call", "named_outputs", "split_inputs"]

CATEGORICAL = (Role.LOGITS, Role.MASK, Role.SEQUENCE)
_CLASS_AXIS = {Role.LOGITS: -1, Role.MASK: 1, Role.SEQUENCE: -1}


def as_example(feed: Mapping[str, Any], contract: ModelContract) -> tuple:
    """A feed ``{input name: array}`` as the positional tensors ``forward`` takes, in the contract's order."""
    import torch

    out = []
    for t in contract.inputs:
        if t.name not in feed:
            raise DataError(f"the data has no input {t.name!r}; the model takes {', '.join(contract.input_names)}")
        v = feed[t.name]
        out.append(v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)))
    return tuple(out)


def call(model, example) -> Any:
    """``model(*example)`` for a tuple of inputs, ``model(example)`` for one tensor."""
    return model(*example) if isinstance(example, tuple) else model(example)


def named_outputs(out: Any) -> dict[str, Any]:
    """A model's return value (a tensor, tuple, dict, namedtuple) by output name, named as its contract names
    them (``output0``.. for a tuple)."""
    from edgetl.contract_read import _flatten_outputs

    return dict(_flatten_outputs(out))


def split_inputs(n: int, *, holdout: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) sample indices: ``holdout`` of the samples (at least one) are kept for measuring;
    with one sample both are that sample."""
    if n < 1:
        raise DataError("the data gave no samples")
    if n == 1:
        return [0], [0]
    order = np.random.default_rng(seed).permutation(n).tolist()
    k = min(n - 1, max(1, int(round(n * holdout))))
    return sorted(order[k:]), sorted(order[:k])


def _batchable(contract: ModelContract, samples: Sequence[Mapping[str, np.ndarray]]) -> bool:
    """Samples join into batches only where every input's batch axis is known: its layout's ``N``, or axis 0 of
    size 1 (a recurrent state ``[2, 1, 32]`` has no named batch axis: it runs sample by sample)."""
    for t in contract.inputs:
        first = np.asarray(samples[0][t.name])
        if first.ndim == 0:
            if any(not np.array_equal(np.asarray(s[t.name]), first) for s in samples):
                return False
            continue
        if "N" in (t.layout or "").replace(",", "").upper():
            continue
        if first.shape[0] != 1:
            return False
    return True


@dataclass(frozen=True)
class InputReference:
    """Reference samples by input name (no labels) for a model described by ``contract``."""

    samples: tuple[dict[str, np.ndarray], ...]
    contract: ModelContract

    @classmethod
    def from_inputs(cls, samples: Sequence[Mapping[str, np.ndarray]], contract: ModelContract, *,
                    limit: int | None = None) -> InputReference:
        picked = tuple(dict(s) for s in samples[:limit])
        if not picked:
            raise DataError("no reference samples: the data gave none")
        return cls(samples=picked, contract=contract)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def batchable(self) -> bool:
        return _batchable(self.contract, self.samples)

    def batches(self, batch_size: int) -> Iterator[tuple[tuple, int]]:
        """``(positional inputs, samples in the batch)``; batch size 1 where the batch axis is unknown."""
        from edgetl.inputs import batches

        size = batch_size if self.batchable else 1
        for i in range(0, len(self.samples), size):
            chunk = self.samples[i : i + size]
            yield as_example(next(batches(chunk, self.contract, batch_size=len(chunk))), self.contract), len(chunk)

    def example(self) -> tuple:
        return as_example(self.samples[0], self.contract)

    def seeding(self, model) -> Seeding:
        """The seeds for ``model``: the regression outputs' reference means are computed here (no grad)."""
        import torch

        outs = self.contract.metric_outputs()
        if not outs:
            raise ConfigError("the model contract names no outputs to seed relevance on; give --outputs NAME")
        means: dict[str, Any] = {}
        regress = [o for o in outs if o.role not in CATEGORICAL]
        if regress:
            sums: dict[str, Any] = {}
            with torch.no_grad():
                for s in self.samples:
                    got = named_outputs(call(model, as_example(s, self.contract)))
                    for o in regress:
                        v = _output(got, o).double()
                        sums[o.name] = v if o.name not in sums else sums[o.name] + v
            means = {k: (v / len(self.samples)).float() for k, v in sums.items()}
        return Seeding(self, outs, means)


def _output(got: Mapping[str, Any], o: OutputTensor) -> Any:
    if o.name not in got:
        raise ConfigError(f"the model gave no output {o.name!r} (it gives {', '.join(got)}); check --outputs")
    return got[o.name]


class Seeding:
    """What :func:`~edgetl.prune.relevance.relevance_scores` needs from a reference: batches and seeds."""

    def __init__(self, reference: InputReference, outputs: Sequence[OutputTensor], means: Mapping[str, Any]) -> None:
        self.reference, self.outputs, self.means = reference, tuple(outputs), dict(means)

    def __len__(self) -> int:
        return len(self.reference)

    def example(self) -> tuple:
        return self.reference.example()

    def batches(self, batch_size: int) -> Iterator[tuple[tuple, int]]:
        return self.reference.batches(batch_size)

    def seed(self, out: Any, n: int) -> tuple[list[Any], list[Any]]:
        """(output tensors, their seeds) for one batch of ``n`` samples (see the module doc)."""
        got = named_outputs(out)
        tensors, seeds = [], []
        for o in self.outputs:
            y = _output(got, o)
            if not y.is_floating_point():
                raise ConfigError(f"output {o.name!r} is {y.dtype}: relevance needs a float output; select others "
                                  "with --outputs")
            tensors.append(y)
            seeds.append(self._seed(o, y.detach(), n))
        return tensors, seeds

    def _seed(self, o: OutputTensor, y: Any, n: int) -> Any:
        import torch

        if o.role in CATEGORICAL:
            axis = o.axis("C", _CLASS_AXIS[o.role]) % max(y.ndim, 1)
            predicted = y.argmax(axis, keepdim=True)
            seed = torch.zeros_like(y).scatter_(axis, predicted, 1.0)
            if o.role is not Role.LOGITS:  # every predicted class the same share (see the module doc)
                counts = seed.sum(dim=[d for d in range(y.ndim) if d != axis], keepdim=True)
                seed = seed / counts.clamp_min(1.0)
        else:
            seed = y - self.means[o.name].to(y.dtype)
        total = float(seed.abs().sum())
        return seed * (n / total) if total > 0 else seed
