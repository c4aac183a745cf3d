"""S3: the ImageNet EfficientNet-Lite0 at 224x224, label-free, on real photographs from ``skimage.data``.

Each photograph gives ``views`` crops (random square crops of 35-100 % of the short side, half of them flipped,
resized to the model's input); the photographs are split by source, so no photograph scored is ever seen by
recovery. Labels are the unpruned model's own top-1 (fp32): the score "agreement" is the top-1 agreement
with the unpruned model, and KL is the mean KL(unpruned || model) of the softmax outputs, on the held-out
photos' views. Recovery is distillation from the unpruned model on the other photos' views.

edgetl's prune stage draws its LRP reference set with ``samples_per_class`` of every one of the model's
classes (``edgetl/prune/pruner.py`` ``_setup`` -> ``reference_set(num_classes=...)``), which 1000-class
label-free data cannot give; this section replaces that draw with ``reference`` seeded views (each relevance
seeded at the unpruned model's top-1), see :func:`_label_free_reference`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.suites.latprune import points as P

# Real photographs bundled with scikit-image (no download); synthetic images (colorwheel, logo, phantoms,
# checkerboard, blobs) are left out.
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket",
          "stereo_motorcycle", "text")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    x = getattr(skimage.data, name)()
    x = x[0] if isinstance(x, tuple) else x  # stereo_motorcycle: (left, right, disparity)
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = (255 * (x.astype(np.float64) / max(1e-9, float(x.max())))).astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return np.ascontiguousarray(x[..., :3])


def views(photo: np.ndarray, n: int, size: int, seed: int):
    """``n`` random square crops (35-100 % of the short side), every other one flipped, as uint8 N x 3 x S x S."""
    import torch
    import torch.nn.functional as F

    g = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    t = torch.from_numpy(photo).permute(2, 0, 1).float()
    out = []
    for k in range(n):
        side = int(min(h, w) * g.uniform(0.35, 1.0))
        y, x = int(g.integers(0, h - side + 1)), int(g.integers(0, w - side + 1))
        crop = t[:, y : y + side, x : x + side]
        if k % 2:
            crop = crop.flip(2)
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop[0].round().clamp(0, 255).to(torch.uint8))
    return torch.stack(out)


def photo_splits(teacher, *, per_photo: int, held_out_every: int = 3, seed: int = 0):
    """DataSplits of photo views: train/val from the recovery photos, test from the held-out photos."""
    import torch

    from edgetl.data import DataSplits, ImageSet
    from edgetl.evaluate import predict

    size = teacher.input_spec.resolution[0]
    rec, held = [], []
    for i, name in enumerate(PHOTOS):
        v = views(_photo(name), per_photo, size, seed + i)
        (held if i % held_out_every == 0 else rec).append((name, v))
    train_x = torch.cat([v[: int(0.85 * len(v))] for _, v in rec])
    val_x = torch.cat([v[int(0.85 * len(v)) :] for _, v in rec])
    test_x = torch.cat([v for _, v in held])

    def labelled(x):
        return ImageSet(x, torch.from_numpy(predict(teacher, x, threads=2).argmax(1)).long())

    return DataSplits(name="skimage-photos", classes=tuple(teacher.labels), train=labelled(train_x),
                      val=labelled(val_x), test=labelled(test_x), seed=seed, fractions=(0.85, 0.15, 0.0),
                      info={"recovery_photos": [n for n, _ in rec], "held_out_photos": [n for n, _ in held],
                            "views_per_photo": per_photo, "labels": "the unpruned fp32 model's top-1"})


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def agreement_score(splits, reference_logits: np.ndarray):
    """Top-1 agreement with the unpruned model and KL(unpruned || model), int8 IR and PyTorch model."""
    from edgetl.evaluate import predict

    p_ref = _softmax(reference_logits.astype(np.float64))
    ref_top = reference_logits.argmax(1)

    def one(logits):
        q = _softmax(logits.astype(np.float64))
        kl = float(np.mean(np.sum(p_ref * (np.log(p_ref + 1e-12) - np.log(q + 1e-12)), axis=1)))
        return float(np.mean(logits.argmax(1) == ref_top)), kl

    def score(int8, art):
        a8, k8 = one(predict(int8, splits.test.images, threads=2))
        a32, k32 = one(predict(art, splits.test.images, threads=2))
        return {"agreement": a8, "kl": k8, "agreement_fp32": a32, "kl_fp32": k32}

    return score


def _label_free_reference(split, spec, *, per_class: int, seed: int = 0, num_classes=None, count: int = 100):
    """``count`` seeded views whatever their (pseudo) class: the reference set of 1000-class label-free data."""
    import torch

    from edgetl.data import prepare
    from edgetl.prune.relevance import ReferenceSet

    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[: min(count, len(split))]
    return ReferenceSet(x=prepare(split.images[idx], spec), y=split.labels[idx].clone())


def section(a, *, work: Path, pause: tuple[int, ...], log):
    """S3's Section and its metadata (teacher, photo splits, distillation recovery, agreement score)."""
    import edgetl.prune.pruner as pruner
    from edgetl.evaluate import predict
    from edgetl.models import load_model

    if a.smoke:
        from benchmarks.suites.latprune.__main__ import _smoke_teacher
        from edgetl.data import load_data

        teacher = _smoke_teacher(load_data("digits", seed=0), 32)
        per_photo, epochs, title = 12, 1, "skimage photos, 32x32, unpruned tiny CNN (smoke)"
    else:
        teacher = load_model("efficientnet_lite0")
        per_photo, epochs = 40, a.s3_recover_epochs
        title = "ImageNet EfficientNet-Lite0, 224x224, 1000 classes, label-free on real photos"
    log(f"[s3] photo views for {teacher.arch}")
    splits = photo_splits(teacher, per_photo=per_photo)
    ref = predict(teacher, splits.test.images, threads=2)
    pruner.reference_set = _label_free_reference  # see the module docstring (a workaround, reported)
    rec = P.Recovery("distill", epochs, a.recover_lr, None, adapt_bn=False)
    sec = P.Section(key="s3", teacher=teacher, splits=splits, recovery=rec, score=agreement_score(splits, ref),
                    work=work, threads=a.threads, quick=a.smoke, pause=pause, log=log)
    info = splits.info
    meta = {"title": title, "need": 1.5, "resolution": teacher.input_spec.resolution[0],
            "note": (f"Scored on {len(splits.test)} views of {len(info['held_out_photos'])} held-out photos "
                     f"({', '.join(info['held_out_photos'])}); recovery on {len(splits.train)} views of "
                     f"{len(info['recovery_photos'])} others. agreement = top-1 agreement with the unpruned fp32 "
                     "model; KL in the JSON. The LRP reference set is 100 recovery views seeded at the unpruned "
                     "model's top-1 (prune's per-class draw cannot serve 1000-class label-free data)."),
            "photos": info}
    return sec, meta
