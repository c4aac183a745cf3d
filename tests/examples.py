"""The files the README's "Any model, any task" examples use, made from the small real models of
:mod:`tests.shapes` (trained briefly, seeded) and data from wheels: ``python -m tests.examples DIR``, then run the
README's commands in DIR (from the repository root's checkout on ``PYTHONPATH``, so ``--arch tests.shapes:SegNet``
imports).

- ``seg.pth`` (:class:`~tests.shapes.SegNet` state dict; any H x W, masks ``[N, 2, H, W]``), ``tiles.npz``
  (100 unseen MNIST digits as ``image``), ``tiles/`` (30 of them as a flat, unlabeled PNG folder);
- ``det.pth`` (:class:`~tests.shapes.FaceDetLike`: boxes, scores, landmarks) and ``det.npz``;
- ``ctc.pth`` (:class:`~tests.shapes.CtcRecognizer`, time-major ``[T, N, 11]``) and ``strips.npz``;
- ``vad.onnx`` (:class:`~tests.shapes.VadLike`: audio, a recurrent state, an int64 sample rate) and ``vad.npz``;
- ``words.pth`` (:class:`~tests.shapes.PooledClassifier`) and ``digits/`` (``DIR/CLASS/IMAGE.png``, classes named
  zero..nine), ``digits.npz`` (``image``, ``labels``, ``label_names``).

``tests.examples:tiles`` is the ``--data module:function`` form: it yields ``{"image": array}`` dicts;
``tests.examples:foreground_agreement`` a ``--metric module:function``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from tests import shapes

CACHE = Path("/tmp/edgetl-fixtures")


def tiles(n: int = 40):
    """``--data tests.examples:tiles``: unseen MNIST digits, one ``{"image": [1, 1, 28, 28]}`` per sample."""
    x = shapes.mnist(None)[0][4000:4000 + n]
    for i in range(len(x)):
        yield {"image": x[i : i + 1]}


def foreground_agreement(reference: dict, candidate: dict) -> float:
    """``--metric tests.examples:foreground_agreement``: the share of the source's foreground pixels (class 1 of
    a two-class mask) the candidate also calls foreground."""
    ref, cand = (np.asarray(next(iter(d.values()))).argmax(axis=1) for d in (reference, candidate))
    fg = ref == 1
    return float((cand[fg] == 1).mean()) if fg.any() else 1.0


def _png_folder(folder: Path, images: np.ndarray, names: list[str | None]) -> None:
    from PIL import Image

    for i, (img, name) in enumerate(zip(images, names, strict=True)):
        d = folder / name if name else folder
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().astype(np.uint8)).save(d / f"{i:03d}.png")


def _vad(out: Path) -> None:
    model = shapes.trained("VadLike", CACHE)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((40, 1, 256)).astype(np.float32)
    state = (0.1 * rng.standard_normal((40, 2, 1, 32))).astype(np.float32)
    np.savez(out / "vad.npz", audio=audio, state=state, sr=np.full(40, 16000, dtype=np.int64))
    args = (torch.from_numpy(audio[0]), torch.from_numpy(state[0]), torch.tensor(16000))
    torch.onnx.export(model, args, out / "vad.onnx", input_names=["audio", "state", "sr"],
                      output_names=["prob", "new_state"], dynamo=False)


def write_examples(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, file in (("SegNet", "seg.pth"), ("FaceDetLike", "det.pth"), ("CtcRecognizer", "ctc.pth"),
                       ("PooledClassifier", "words.pth")):
        torch.save(shapes.trained(name, CACHE).state_dict(), out / file)
    x, y = shapes.mnist(None)
    np.savez(out / "tiles.npz", image=x[4000:4100])
    _png_folder(out / "tiles", x[4000:4030], [None] * 30)
    _png_folder(out / "digits", x[4100:4200], [shapes.WORDS[int(c)] for c in y[4100:4200]])
    np.savez(out / "digits.npz", image=x[4100:4200], labels=y[4100:4200], label_names=np.array(shapes.WORDS))
    det, _ = shapes.det_data(100, seed=7)
    np.savez(out / "det.npz", image=det)
    strips, _ = shapes.ctc_data(60, seed=7)
    np.savez(out / "strips.npz", image=strips)
    _vad(out)


if __name__ == "__main__":
    write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "examples"))
