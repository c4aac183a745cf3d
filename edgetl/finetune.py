"""Transfer learning: a pretrained zoo model adapted to the user's dataset.

The head is replaced and trained first on cached features (the frozen trunk runs once per image), then the
trunk is unfrozen progressively from the output side (``unfreeze`` fractions of its parameters), each phase
keeping the best-validation weights. The result is the "fine-tuned model" every later stage starts from.

Example::

    art = finetune("efficientnet_lite0", load_data("mnist5k"), FinetuneConfig())
    art.last_metric("test_accuracy")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from edgetl.artifact import Artifact, StageRecord
from edgetl.data import DataSplits, default_input_spec, iterate
from edgetl.errors import ConfigError
from edgetl.models import arch_spec, classifier_layer, load_model
from edgetl.progress import task
from edgetl.train import evaluate_module, fit

__all__ = ["FinetuneConfig", "finetune", "default_resolution"]


@dataclass(frozen=True)
class FinetuneConfig:
    resolution: int | None = None  # square input side; None: from the data (see default_resolution)
    head_epochs: int = 5  # few: a head fitted hard to frozen features fights the later phases
    epochs: int = 2  # per unfreezing phase
    unfreeze: tuple[float, ...] = (0.5, 1.0)  # cumulative fraction of trunk parameters trained per phase
    lr: float = 1e-3
    batch_size: int = 32
    pretrained: bool = True
    adapt_bn: bool = True
    stable_forward: bool = False  # train in eval mode (see edgetl.train.fit)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution is not None and not 8 <= self.resolution <= 1024:
            raise ConfigError(f"resolution must be in 8..1024, got {self.resolution}")
        if self.head_epochs < 0 or self.epochs < 0:
            raise ConfigError("epochs must be >= 0")
        if any(not 0 < f <= 1 for f in self.unfreeze) or list(self.unfreeze) != sorted(self.unfreeze):
            raise ConfigError(f"unfreeze fractions must increase within (0, 1], got {self.unfreeze}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("lr must be > 0 and batch_size >= 1")


def default_resolution(native: tuple[int, int], arch_default: int) -> int:
    """The data's size rounded up to a multiple of 32, at least 64 and at most the architecture's default.

    Small inputs keep training and inference cheap on edge CPUs; 64 leaves a 2x2 map after a stride-32 trunk.
    """
    side = max(native)
    return int(min(arch_default, max(64, -(-side // 32) * 32)))


def _trunk_chunks(model, head_name: str) -> list[list]:
    """Parameterised leaf modules of the trunk in registration order (roughly input to output)."""
    leaves = []
    for name, mod in model.named_modules():
        if name == head_name or name.startswith(head_name + "."):
            continue
        own = list(mod.parameters(recurse=False))
        if own:
            leaves.append((name, own))
    return leaves


def _set_trainable(model, head_name: str, fraction: float) -> int:
    leaves = _trunk_chunks(model, head_name)
    sizes = [sum(p.numel() for p in ps) for _, ps in leaves]
    total = sum(sizes)
    budget, acc = fraction * total, 0
    for p in model.parameters():
        p.requires_grad_(False)
    for (_, ps), size in zip(reversed(leaves), reversed(sizes), strict=True):
        if acc >= budget:
            break
        for p in ps:
            p.requires_grad_(True)
        acc += size
    for p in model.get_submodule(head_name).parameters():
        p.requires_grad_(True)
    return acc


def adapt_batchnorm(model, splits: DataSplits, spec, *, batch_size: int = 128) -> int:
    """Re-estimate BatchNorm running statistics on the target data (AdaBN, Li et al. 2016).

    ImageNet statistics are far from e.g. MNIST's; re-estimating them (one forward pass, no gradients) makes
    the frozen trunk's features usable before any weight changes. Returns how many BN layers were adapted.
    """
    import torch
    import torch.nn as nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.eval()
    for m in bns:
        m.train()
    with torch.no_grad(), task("adapt batch-norm statistics", len(splits.train)) as bar:
        for x, y in iterate(splits.train, spec, batch_size=batch_size, shuffle=True, seed=1):
            model(x)
            bar.advance(len(y))
    for m, mom in saved:
        m.momentum = mom
    model.eval()
    return len(bns)


def _train_head_cached(model, head_name, splits: DataSplits, spec, cfg: FinetuneConfig) -> dict:
    """Train only the head on features cached from one pass of the frozen trunk."""
    import torch
    import torch.nn.functional as F

    head = model.get_submodule(head_name)
    feats: list = []
    hook = head.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))

    def collect(split):
        feats.clear()
        ys = []
        with torch.no_grad():
            for x, y in iterate(splits.split(split), spec, batch_size=128):
                model(x)
                ys.append(y)
                bar.advance(len(y))
        return torch.cat(feats), torch.cat(ys)

    model.eval()
    with task("cache trunk features", len(splits.train) + len(splits.val)) as bar:
        ftr, ytr = collect("train")
        fva, yva = collect("val")
    hook.remove()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state = -1.0, None
    with task("train head", cfg.head_epochs) as bar:
        for _ in range(cfg.head_epochs):
            perm = torch.randperm(len(ytr), generator=gen)
            for i in range(0, len(perm), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(head(ftr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                acc = float((head(fva).argmax(1) == yva).float().mean())
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
            bar.advance(1, val_accuracy=acc)
    if best_state is not None:
        head.load_state_dict(best_state)
    return {"phase": "head", "val_accuracy": best, "epochs": cfg.head_epochs}


def finetune(model: str | Artifact, data: DataSplits, config: FinetuneConfig | None = None) -> Artifact:
    """Fine-tune a zoo model (by name or artifact) on ``data``; returns the artifact with test accuracy."""
    cfg = config or FinetuneConfig()
    start = time.perf_counter()
    import torch

    torch.manual_seed(cfg.seed)
    if isinstance(model, Artifact):
        base = model
        spec_arch = arch_spec(base.arch) if base.arch else None
    else:
        spec_arch = arch_spec(model)
        base = load_model(spec_arch.name, num_classes=data.num_classes, pretrained=cfg.pretrained,
                          labels=list(data.classes))
    net = base.model
    head_name, head = classifier_layer(net)
    if head.out_features != data.num_classes:
        from edgetl.models import replace_classifier

        replace_classifier(net, data.num_classes)
    arch_default = spec_arch.default_resolution if spec_arch else base.input_spec.resolution[0]
    res = cfg.resolution or default_resolution(data.native_resolution, arch_default)
    spec = default_input_spec(data, channels=base.input_spec.channels, mean=base.input_spec.mean,
                              std=base.input_spec.std, resolution=res)
    phases = []
    if cfg.adapt_bn:
        phases.append({"phase": "adapt batch-norm", "layers": adapt_batchnorm(net, data, spec)})
    if cfg.head_epochs:
        _set_trainable(net, head_name, 0.0)
        phases.append(_train_head_cached(net, head_name, data, spec, cfg))
    for k, frac in enumerate(cfg.unfreeze, 1):
        if cfg.epochs == 0:
            break
        n_trainable = _set_trainable(net, head_name, frac)
        r = fit(net, data, spec, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed + k,
                description=f"unfreeze {int(frac * 100)}% of trunk", stable_forward=cfg.stable_forward)
        phases.append({"phase": f"unfreeze {frac:g}", "trainable_trunk_params": n_trainable,
                       "val_accuracy": r.best_val_accuracy, "history": r.history})
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    val = evaluate_module(net, data.val, spec)
    test = evaluate_module(net, data.test, spec)
    record = StageRecord(
        stage="finetune",
        options={**asdict(cfg), "resolution": res, "data": data.name, "split_seed": data.seed},
        metrics={"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "accuracy": test["accuracy"],
                 "test_loss": test["loss"], "params": sum(p.numel() for p in net.parameters()), "phases": phases},
        seconds=time.perf_counter() - start,
    )
    out = Artifact(format=base.format, input_spec=spec, labels=tuple(data.classes), model=net, arch=base.arch,
                   history=[*base.history, record], extra={**base.extra, "data": data.name})
    return out
