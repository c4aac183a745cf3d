"""Label-free fidelity: how closely a compressed model's outputs follow its source's on the same real inputs.

Per output: cosine similarity, SNR in dB, max abs error and max error relative to the reference's largest
magnitude. By the output's :class:`~edgetl.contract.Role`: logits add top-1/top-5 agreement and KL; masks add
mIoU against the source's argmax; sequences add greedy (CTC) decode agreement; boxes + scores add box-level F1
against the source's boxes at IoU 0.5. A user metric plugs in as ``module:function``. :func:`headline` says
which number a report shows for a task.

Example::

    res = compare(ref_outputs, int8_outputs, contract=c)     # lists of {output name: array}, one per batch
    headline(res, c.task)                                    # Headline(metric="top1_agreement", value=0.98, ...)
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.contract import ModelContract, OutputTensor, Role, Task
from edgetl.errors import ConfigError, ParityError

__all__ = ["ClassificationAgreement", "DetectionAgreement", "DetectionLayout", "FidelityResult", "Headline",
           "OutputFidelity", "SegmentationAgreement", "SequenceAgreement", "check_budget", "compare", "ctc_greedy",
           "headline", "resolve_metric", "stack_outputs"]


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/nan: say it, never drop it
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class _Data:
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) if not hasattr(getattr(self, f.name), "to_dict")
                else getattr(self, f.name).to_dict() for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class OutputFidelity(_Data):
    output: str
    role: str
    cosine: float | None
    snr_db: float | None
    max_abs: float | None
    max_rel: float | None
    elements: int
    nonfinite: int = 0  # candidate values that are NaN/inf; the other figures are None then


@dataclass(frozen=True)
class ClassificationAgreement(_Data):
    output: str
    top1: float
    top5: float | None  # the source's top-1 among the candidate's top-5; None with fewer than 6 classes
    kl: float  # mean KL(source || candidate) of the softmaxes, nats
    samples: int


@dataclass(frozen=True)
class SegmentationAgreement(_Data):
    output: str
    miou: float
    pixel_agreement: float
    classes: int
    pixels: int


@dataclass(frozen=True)
class SequenceAgreement(_Data):
    output: str
    exact: float  # fraction of samples whose greedy decodes are identical
    char_error_rate: float  # edit distance over the source decode's length
    samples: int


@dataclass(frozen=True)
class DetectionLayout:
    """How to read boxes and scores: box format, the score threshold a box counts above, the IoU that matches,
    and which score column is the object (``None``: class-aware, argmax over the last axis)."""

    box_format: str = "xyxy"
    score_threshold: float = 0.5
    iou: float = 0.5
    score_column: int | None = None

    def __post_init__(self) -> None:
        if self.box_format not in ("xyxy", "xywh", "cxcywh"):
            raise ConfigError(f"box format {self.box_format!r}: valid are xyxy, xywh, cxcywh")
        if not 0.0 < self.iou <= 1.0:
            raise ConfigError(f"detection IoU must be in (0, 1], got {self.iou}")


@dataclass(frozen=True)
class DetectionAgreement(_Data):
    boxes: str
    scores: str
    f1: float | None  # None when neither model found a box above the threshold: nothing to agree on
    precision: float | None
    recall: float | None
    reference_boxes: int
    candidate_boxes: int
    iou: float
    score_threshold: float


@dataclass(frozen=True)
class FidelityResult(_Data):
    outputs: tuple[OutputFidelity, ...]
    samples: int
    classification: tuple[ClassificationAgreement, ...] = ()
    segmentation: tuple[SegmentationAgreement, ...] = ()
    sequence: tuple[SequenceAgreement, ...] = ()
    detection: tuple[DetectionAgreement, ...] = ()
    user: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"samples": self.samples, "user": _plain(self.user)}
        for name in ("outputs", "classification", "segmentation", "sequence", "detection"):
            d[name] = [x.to_dict() for x in getattr(self, name)]
        return d


# --------------------------------------------------------------------------- generic
def stack_outputs(batches: Sequence[Mapping[str, Any]] | Mapping[str, Any], contract: ModelContract
                  ) -> dict[str, np.ndarray]:
    """Per-batch output dicts joined along each output's batch axis (``N`` in its layout, else 0)."""
    if isinstance(batches, Mapping):
        return {k: np.asarray(v) for k, v in batches.items()}
    if not batches:
        raise ConfigError("no outputs to compare: the data gave no samples")
    out = {}
    for name in batches[0]:
        axis = contract.output(name).axis("N", 0) if name in contract.output_names else 0
        out[name] = np.concatenate([np.asarray(b[name]) for b in batches], axis=axis)
    return out


def _output_fidelity(o: OutputTensor, ref: np.ndarray, cand: np.ndarray) -> OutputFidelity:
    if ref.shape != cand.shape:
        raise ParityError(f"output {o.name!r}: the candidate gives shape {cand.shape}, the source {ref.shape}")
    r, c = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    bad = int((~np.isfinite(c)).sum())
    if bad or not np.isfinite(r).all():
        return OutputFidelity(o.name, o.role.value, None, None, None, None, r.size, nonfinite=bad)
    err = r - c
    max_abs = float(np.abs(err).max()) if r.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    denom = float(np.linalg.norm(r) * np.linalg.norm(c))
    if not err.any():  # identical: exactly 1, not a rounding of it
        cosine = 1.0
    else:
        cosine = float(np.clip(r @ c / denom, -1.0, 1.0)) if denom > 0 else 0.0
    noise = float(err @ err)
    snr = math.inf if noise == 0 else 10.0 * math.log10(max(float(r @ r), 1e-300) / noise)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return OutputFidelity(o.name, o.role.value, cosine, snr, max_abs, max_rel, r.size)


# --------------------------------------------------------------------------- task extras
def _move_class_last(o: OutputTensor, x: np.ndarray, default_axis: int) -> np.ndarray:
    return np.moveaxis(x, o.axis("C", default_axis) % x.ndim, -1)


def _classification(o: OutputTensor, ref: np.ndarray, cand: np.ndarray) -> ClassificationAgreement:
    r = _move_class_last(o, ref, -1).reshape(-1, ref.shape[o.axis("C", -1)]).astype(np.float64)
    c = _move_class_last(o, cand, -1).reshape(r.shape).astype(np.float64)
    top_ref = r.argmax(1)
    top1 = float((c.argmax(1) == top_ref).mean())
    top5 = None
    if r.shape[1] > 5:
        top5 = float((np.argsort(-c, axis=1)[:, :5] == top_ref[:, None]).any(1).mean())
    lr = r - r.max(1, keepdims=True)
    lr -= np.log(np.exp(lr).sum(1, keepdims=True))
    lc = c - c.max(1, keepdims=True)
    lc -= np.log(np.exp(lc).sum(1, keepdims=True))
    kl = float((np.exp(lr) * (lr - lc)).sum(1).mean())
    return ClassificationAgreement(o.name, top1, top5, kl, len(r))


def _segmentation(o: OutputTensor, ref: np.ndarray, cand: np.ndarray) -> SegmentationAgreement:
    axis = o.axis("C", 1) % ref.ndim
    if ref.shape[axis] == 1:  # one logit per pixel: foreground above 0
        a, b = (np.take(ref, 0, axis) > 0).astype(np.int64), (np.take(cand, 0, axis) > 0).astype(np.int64)
        k = 2
    else:
        a, b, k = ref.argmax(axis), cand.argmax(axis), ref.shape[axis]
    conf = np.bincount(a.ravel() * k + b.ravel(), minlength=k * k).reshape(k, k)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    miou = float((inter[present] / union[present]).mean()) if present.any() else 1.0
    return SegmentationAgreement(o.name, miou, float(inter.sum() / max(conf.sum(), 1)), int(present.sum()),
                                 int(conf.sum()))


def ctc_greedy(x: np.ndarray, *, layout: str, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decode of per-step scores laid out as ``layout`` (``"T,N,C"`` or ``"N,T,C"``): argmax per step,
    repeats collapsed, blanks removed; one tuple of class ids per sample."""
    axes = [a.strip() for a in layout.split(",")]
    if sorted(axes) != ["C", "N", "T"]:
        raise ConfigError(f"a sequence output's layout names axes T, N and C (e.g. T,N,C), got {layout!r}; "
                          "set it with --role NAME:sequence:T,N,C")
    best = np.transpose(x, [axes.index("N"), axes.index("T"), axes.index("C")]).argmax(-1)
    decoded = []
    for row in best:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        decoded.append(tuple(int(v) for v in row[keep] if v != blank))
    return decoded


def _edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _sequence(o: OutputTensor, ref: np.ndarray, cand: np.ndarray, blank: int) -> SequenceAgreement:
    if not o.layout:
        raise ConfigError(f"output {o.name!r} is a sequence of unknown layout; say which axis is time: "
                          f"--role {o.name}:sequence:T,N,C (time-major) or N,T,C")
    a, b = ctc_greedy(ref, layout=o.layout, blank=blank), ctc_greedy(cand, layout=o.layout, blank=blank)
    exact = float(np.mean([x == y for x, y in zip(a, b, strict=False)]))
    dist = sum(_edit_distance(x, y) for x, y in zip(a, b, strict=False))
    total = sum(max(len(x), 1) for x in a)
    return SequenceAgreement(o.name, exact, dist / total, len(a))


def _to_xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return b
    if fmt == "xywh":
        return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], -1)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], -1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _detections(boxes: np.ndarray, scores: np.ndarray, lay: DetectionLayout) -> list[tuple[np.ndarray, ...]]:
    if scores.ndim == boxes.ndim:  # [N, A, C]
        if lay.score_column is not None:
            s, cls = scores[..., lay.score_column], np.zeros(scores.shape[:-1], np.int64)
        else:
            s, cls = scores.max(-1), scores.argmax(-1)
    else:
        s, cls = scores, np.zeros(scores.shape, np.int64)
    xyxy = _to_xyxy(boxes.astype(np.float64), lay.box_format)
    out = []
    for i in range(len(xyxy)):
        keep = s[i] > lay.score_threshold
        out.append((xyxy[i][keep], s[i][keep], cls[i][keep]))
    return out


def _detection(bo: OutputTensor, so: OutputTensor, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray],
               lay: DetectionLayout) -> DetectionAgreement:
    lay = dataclasses.replace(lay, box_format=bo.box_format or lay.box_format)
    if ref[bo.name].ndim != 3 or ref[bo.name].shape[-1] < 4:
        raise ConfigError(f"boxes output {bo.name!r} has shape {ref[bo.name].shape}; box F1 reads [N, A, 4]")
    tp = n_ref = n_cand = 0
    for (rb, _, rc), (cb, cs, cc) in zip(_detections(ref[bo.name], ref[so.name], lay),
                                         _detections(cand[bo.name], cand[so.name], lay), strict=False):
        n_ref, n_cand = n_ref + len(rb), n_cand + len(cb)
        if not len(rb) or not len(cb):
            continue
        iou = _iou(cb, rb)
        iou[cc[:, None] != rc[None, :]] = 0.0
        taken = np.zeros(len(rb), bool)
        for j in np.argsort(-cs):  # the candidate's most confident boxes claim their best source box first
            free = np.where(taken, -1.0, iou[j])
            k = int(free.argmax())
            if free[k] >= lay.iou:
                taken[k] = True
                tp += 1
    if n_ref + n_cand == 0:
        return DetectionAgreement(bo.name, so.name, None, None, None, 0, 0, lay.iou, lay.score_threshold)
    precision = tp / n_cand if n_cand else 0.0
    recall = tp / n_ref if n_ref else 0.0
    return DetectionAgreement(bo.name, so.name, 2 * tp / (n_ref + n_cand), precision, recall, n_ref, n_cand,
                              lay.iou, lay.score_threshold)


# --------------------------------------------------------------------------- user metric
def resolve_metric(spec: str) -> Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], Any]:
    """``--metric module:function``: a callable ``f(reference, candidate) -> float | {name: float}`` taking the
    stacked output dicts. Imports the user's module, which the user asked for by naming it."""
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"--metric {spec}: write module:function, e.g. --metric mypkg.metrics:wer")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"--metric {spec}: cannot import {module!r} ({e}); is it on PYTHONPATH?") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"--metric {spec}: {module!r} has no function {attr!r}")
    return fn


def _user_metric(fn: Callable, ref: dict, cand: dict, spec: str) -> dict[str, float]:
    value = fn(ref, cand)
    items = value.items() if isinstance(value, Mapping) else [(getattr(fn, "__name__", spec), value)]
    out = {}
    for k, v in items:
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"--metric {spec}: returned {type(v).__name__} for {k!r}; a metric returns a number "
                              "or a dict of numbers") from None
    return out


def compare(reference: Sequence[Mapping[str, Any]] | Mapping[str, Any],
            candidate: Sequence[Mapping[str, Any]] | Mapping[str, Any], *, contract: ModelContract,
            detection: DetectionLayout | None = None, blank: int = 0, metric: str | Callable | None = None
            ) -> FidelityResult:
    """Fidelity of ``candidate`` against ``reference`` on the contract's metric outputs (see module doc)."""
    ref, cand = stack_outputs(reference, contract), stack_outputs(candidate, contract)
    outs = contract.metric_outputs()
    for o in outs:
        for side, d in (("source", ref), ("candidate", cand)):
            if o.name not in d:
                raise ParityError(f"the {side} gave no output {o.name!r}; it gave {', '.join(d) or 'none'}")
    first = ref[outs[0].name]
    samples = int(first.shape[outs[0].axis("N", 0)]) if first.ndim else 1
    extras: dict[str, list] = {"classification": [], "segmentation": [], "sequence": [], "detection": []}
    for o in outs:
        if o.role == Role.LOGITS:
            extras["classification"].append(_classification(o, ref[o.name], cand[o.name]))
        elif o.role == Role.MASK:
            extras["segmentation"].append(_segmentation(o, ref[o.name], cand[o.name]))
        elif o.role == Role.SEQUENCE:
            extras["sequence"].append(_sequence(o, ref[o.name], cand[o.name], blank))
    boxes, scores = contract.with_role(Role.BOXES), contract.with_role(Role.SCORES)
    if boxes and scores:
        extras["detection"].append(_detection(boxes[0], scores[0], ref, cand, detection or DetectionLayout()))
    elif contract.task == Task.DETECTION:
        raise ConfigError("detection fidelity needs one output with role boxes and one with role scores; name them "
                          "with --role NAME:boxes[:N,A,4[:xyxy]] and --role NAME:scores")
    user = {}
    if metric is not None:
        fn = resolve_metric(metric) if isinstance(metric, str) else metric
        user = _user_metric(fn, ref, cand, str(metric))
    return FidelityResult(outputs=tuple(_output_fidelity(o, ref[o.name], cand[o.name]) for o in outs),
                          samples=samples, user=user, **{k: tuple(v) for k, v in extras.items()})


# --------------------------------------------------------------------------- what a report shows
@dataclass(frozen=True)
class Headline(_Data):
    metric: str
    value: float | None
    output: str
    higher_is_better: bool = True


_TASK_HEADLINE = {Task.CLASSIFICATION: ("classification", "top1", "top1_agreement"),
                  Task.SEGMENTATION: ("segmentation", "miou", "miou"),
                  Task.SEQUENCE: ("sequence", "exact", "decode_agreement"),
                  Task.DETECTION: ("detection", "f1", "box_f1")}


def headline(result: FidelityResult, task: Task | str, *, metric: str | None = None) -> Headline:
    """The one number a report shows for ``task``: the user's metric if named, else the task's agreement metric,
    else (embedding, generic) the lowest SNR across outputs."""
    if metric is not None:
        if metric not in result.user:
            raise ConfigError(f"metric {metric!r} was not computed; computed: {', '.join(result.user) or 'none'}")
        return Headline(metric, result.user[metric], "*")
    task = Task.parse(task)
    if task in _TASK_HEADLINE:
        group, attr, name = _TASK_HEADLINE[task]
        items = getattr(result, group)
        if not items:
            role = {"classification": "logits", "segmentation": "mask", "detection": "boxes"}.get(group, group)
            raise ConfigError(f"task {task.value} has no {group} output to report on; give the output its role with "
                              f"--role NAME:{role}")
        item = items[0]
        return Headline(name, getattr(item, attr), getattr(item, "output", getattr(item, "boxes", "")))
    if task == Task.EMBEDDING:
        worst = min(result.outputs, key=lambda o: -2.0 if o.cosine is None else o.cosine)
        return Headline("cosine", worst.cosine, worst.output)
    worst = min(result.outputs, key=lambda o: -math.inf if o.snr_db is None else o.snr_db)
    return Headline("snr_db", worst.snr_db, worst.output)


def check_budget(result: FidelityResult, task: Task | str, *, max_drop: float | None = None,
                 min_snr: float | None = None, metric: str | None = None) -> Headline:
    """Raise :class:`~edgetl.errors.BudgetError` when the fidelity misses a budget: ``max_drop`` on the task's
    agreement metric (1 - agreement, e.g. 0.01 = one prediction in a hundred may change) or ``min_snr`` dB on every
    output. Returns the headline it judged."""
    from edgetl.errors import BudgetError

    head = headline(result, task, metric=metric)
    if max_drop is not None:
        if head.value is None or head.metric == "snr_db":
            raise BudgetError(f"--max-drop needs an agreement metric; {head.metric} of {head.output!r} is "
                              f"{head.value}: use --min-snr for task {Task.parse(task).value}")
        if 1.0 - head.value > max_drop:
            raise BudgetError(f"{head.metric} of {head.output!r} is {head.value:.4f}: a drop of {1 - head.value:.4f} "
                              f"exceeds --max-drop {max_drop}")
    if min_snr is not None:
        for o in result.outputs:
            if o.snr_db is None or o.snr_db < min_snr:
                got = "not finite" if o.snr_db is None else f"{o.snr_db:.1f} dB"
                raise BudgetError(f"output {o.output!r}: SNR {got} is below --min-snr {min_snr} dB")
    return head
