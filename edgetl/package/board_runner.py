#!/usr/bin/env python3
"""Run the model of this bundle with its runtime alone (numpy, pillow and the runtime: no torch, no edgetl).

Written by ``edgetl package`` as ``run.py``; everything it needs is in ``manifest.json`` beside it.

    python run.py IMAGE [IMAGE ...]          # top-k with labels (classifiers) or raw outputs, as JSON
    python run.py --check                    # checksums, reference outputs, the bundled sample, latency

    from run import Model
    m = Model()                              # the bundle this file lives in
    m.predict(["digit.png"])[0]["top"][0]    # {"index": 3, "label": "3", "score": 0.98}

Preprocessing reproduces edgetl's training pipeline (edgetl.data.prepare): convert the image to the recorded
colour mode, scale to [0, 1], convert channels, resize with torch's antialiased separable filter
(``F.interpolate(..., antialias=True, align_corners=False)``), normalise by mean/std, NCHW float32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SUMS = "SHA256SUMS"


# --------------------------------------------------------------------------- preprocessing
def _bilinear(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x, a=-0.5):  # torch's antialiased bicubic uses PIL's a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2.0, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def resize_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """``out_size x in_size`` weights of torch's antialiased interpolation along one axis (or 'nearest')."""
    m = np.zeros((out_size, in_size), dtype=np.float64)
    if method == "nearest":  # torch 'nearest': floor(i * in/out) in float32
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)
        m[np.arange(out_size), src] = 1.0
        return m
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown resize method {method!r}")
    # float32 arithmetic step by step as torch computes the weights for a float32 tensor
    # (aten/src/ATen/native/cpu/UpSampleKernel.cpp, _compute_weights_aa): float64 weights differ by ~1e-5.
    f32 = np.float32
    f, half = (_bilinear, 1.0) if method == "bilinear" else (_bicubic, 2.0)
    scale = f32(in_size) / f32(out_size)
    support = f32(half) * scale if scale >= 1.0 else f32(half)
    invscale = f32(1.0 / float(scale)) if scale >= 1.0 else f32(1.0)
    for i in range(out_size):
        center = f32(float(scale) * (i + 0.5))
        lo = max(int(float(center - support) + 0.5), 0)
        hi = min(int(float(center + support) + 0.5), in_size)
        j = np.arange(lo, hi)
        arg = ((j.astype(np.float32) - center).astype(np.float64) + 0.5) * float(invscale)
        w = f(arg.astype(np.float32)).astype(np.float32)
        total = f32(0.0)
        for v in w:
            total = f32(total + v)
        if total != 0.0:
            m[i, lo:hi] = w / total
    return m


def to_array(image, mode: str) -> np.ndarray:
    """A file path, PIL image or HxW(xC) uint8 array -> uint8 C x H x W in ``mode`` ('L' or 'RGB')."""
    if isinstance(image, np.ndarray):
        a = image
    else:
        from PIL import Image

        im = Image.open(image) if isinstance(image, (str, os.PathLike)) else image
        a = np.asarray(im.convert(mode))
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[0] not in (1, 3):
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a)


def preprocess(images, spec: dict) -> np.ndarray:
    """uint8 C x H x W arrays (or files) -> the float32 batch the model takes, as recorded in ``spec``."""
    out = []
    c_model = spec["channels"]
    mean = np.asarray(spec["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(-1, 1, 1)
    h, w = spec["size"]
    for img in images:
        a = to_array(img, spec["color_mode"])
        x = a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a.astype(np.float32)
        if x.shape[0] != c_model:
            if x.shape[0] == 1:
                x = np.repeat(x, c_model, axis=0)
            elif c_model == 1:
                x = x.mean(axis=0, keepdims=True)
            else:
                raise ValueError(f"cannot convert a {x.shape[0]}-channel image to {c_model} channels")
        if x.shape[1:] != (h, w):
            method = spec["resize"]["method"]
            rh = resize_matrix(x.shape[1], h, method)
            rw = resize_matrix(x.shape[2], w, method)
            x = np.stack([rh @ ch @ rw.T for ch in x.astype(np.float64)]).astype(np.float32)
        out.append((x - mean) / std)
    batch = np.stack(out).astype(np.float32)
    return np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if spec.get("layout") == "NHWC" else batch


# --------------------------------------------------------------------------- runtimes
class _OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as edgetl's benchmarks run it
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.version = ort.__version__

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})


class _OpenVino:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None) -> None:
        import openvino as ov

        core = ov.Core()
        cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}  # CPUs with bf16 default to it
        if threads:
            cfg.update({"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": "1"})
        model = core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() if o.get_names() else f"output{i}"
                             for i, o in enumerate(self.compiled.outputs)]
        self.version = ov.get_version()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        res = self.request.infer({0: x})
        return [np.asarray(res[o]) for o in self.compiled.outputs]


class _TensorRt:
    """TensorRT 10 engine with cuda-python buffers (engines built by build.sh on this device)."""

    name = "tensorrt"

    def __init__(self, path: Path, threads: int | None) -> None:
        import tensorrt as trt

        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.trt, self.rt = trt, cudart
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RuntimeError(f"{path.name}: this TensorRT cannot load the engine; rebuild it here with ./build.sh")
        self.engine, self.ctx = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if n != self.input]
        self.stream = self._ok(cudart.cudaStreamCreate())
        self.version, self.bufs = trt.__version__, {}

    def _ok(self, res):
        err, *rest = res
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        rt, kind = self.rt, self.rt.cudaMemcpyKind
        self.ctx.set_input_shape(self.input, x.shape)
        outs = {}
        for n in (self.input, *self.output_names):
            dt = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n)))
            shape = tuple(self.ctx.get_tensor_shape(n))
            nbytes = int(np.prod(shape)) * dt.itemsize
            if n not in self.bufs or self.bufs[n][1] < nbytes:
                self.bufs[n] = (self._ok(rt.cudaMalloc(nbytes)), nbytes)
            self.ctx.set_tensor_address(n, self.bufs[n][0])
            outs[n] = np.empty(shape, dt)
        host = np.ascontiguousarray(x, dtype=outs[self.input].dtype)
        self._ok(rt.cudaMemcpyAsync(self.bufs[self.input][0], host.ctypes.data, host.nbytes,
                                    kind.cudaMemcpyHostToDevice, self.stream))
        self.ctx.execute_async_v3(self.stream)
        for n in self.output_names:
            self._ok(rt.cudaMemcpyAsync(outs[n].ctypes.data, self.bufs[n][0], outs[n].nbytes,
                                        kind.cudaMemcpyDeviceToHost, self.stream))
        self._ok(rt.cudaStreamSynchronize(self.stream))
        return [outs[n].astype(np.float32, copy=False) for n in self.output_names]


RUNTIMES = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVino, "tensorrt": _TensorRt}


# --------------------------------------------------------------------------- the model
def top_classes(logits, labels, k: int = 5) -> list[dict]:
    """The ``k`` classes of one output row, softmax scores, with their labels."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [{"index": int(k), "label": labels[k] if k < len(labels) else str(k), "score": float(p[k])}
            for k in order]


class Model:
    """The bundle's model: ``predict`` files or arrays, ``run`` a preprocessed batch."""

    def __init__(self, bundle: str | os.PathLike | None = None, *, threads: int | None = None) -> None:
        self.root = Path(bundle) if bundle else HERE
        self.manifest = json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        self.spec = self.manifest["preprocessing"]
        self.labels = self.manifest.get("labels") or []
        self.note = None
        chosen = None
        for cand in self.manifest["runs"]:  # in order of preference; e.g. the TensorRT engine, then its ONNX
            path = self.root / cand["file"]
            if not path.exists():
                self.note = f"{cand['file']} is missing ({cand.get('missing', 'not in the bundle')})"
                continue
            try:
                chosen = RUNTIMES[cand["runtime"]](path, threads)
                self.file = cand["file"]
                break
            except ImportError as e:
                self.note = f"{cand['runtime']} is not installed ({e}); pip install -r requirements.txt"
        if chosen is None:
            raise RuntimeError(f"cannot run this bundle: {self.note}")
        self.runtime = chosen

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Named raw outputs for a preprocessed batch (one image at a time for static-batch models)."""
        rows = [self.runtime.run(np.ascontiguousarray(batch[i : i + 1])) for i in range(len(batch))]
        return {n: np.concatenate([r[k] for r in rows]) for k, n in enumerate(self.runtime.output_names)}

    def predict(self, images, *, top_k: int = 5) -> list[dict]:
        """Top-k with labels for a classifier, else every named output, per image."""
        outs = self.run(preprocess(images, self.spec))
        first = next(iter(outs.values()))
        results = []
        for i in range(len(first)):
            if self.manifest.get("task") == "classification":
                results.append({"top": top_classes(first[i], self.labels, top_k)})
            else:
                results.append({"outputs": {n: o[i].tolist() for n, o in outs.items()}})
        return results

    def describe(self) -> dict:
        return {"model": self.file, "runtime": self.runtime.name, "runtime_version": str(self.runtime.version),
                **({"note": self.note} if self.note else {})}


# --------------------------------------------------------------------------- checks (edgetl verify)
def check_sums(root: Path = HERE) -> list[str]:
    """Files that are missing, changed or not listed in SHA256SUMS (empty: all good)."""
    listed, bad = {}, []
    for line in (root / SUMS).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            listed[name.lstrip("*")] = digest
    for name, digest in listed.items():
        p = root / name
        if not p.is_file():
            bad.append(f"{name}: missing")
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            bad.append(f"{name}: checksum mismatch (changed since packaging)")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != SUMS and rel not in listed and "__pycache__" not in rel:
            bad.append(f"{rel}: not listed in {SUMS} (added after packaging)")
    return bad


def _environment() -> dict:
    env = {"machine": platform.machine(), "os": f"{platform.system()} {platform.release()}",
           "python": platform.python_version(), "hostname": platform.node(), "logical_cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip().lower() in ("model name", "hardware") and v.strip():
                env["cpu"] = v.strip()
                break
        env["board"] = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    except OSError:
        pass
    return env


def _busy() -> tuple[float, float] | None:
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    t = os.times()
    return (sum(f[:8]) - f[3] - (f[4] if len(f) > 4 else 0)) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def bench(model: Model, batch: np.ndarray, *, warmup_s: float, warmup_runs: int, min_time_s: float,
          min_count: int, max_time_s: float) -> dict:
    """Single-stream latency as edgetl's harness measures it: warm-up, then min count AND min time."""
    run, n = model.runtime.run, len(batch)
    i, start = 0, time.perf_counter()
    while (i < warmup_runs or time.perf_counter() - start < warmup_s) and time.perf_counter() - start < max_time_s:
        run(batch[i % n : i % n + 1])
        i += 1
    samples, b0, t0 = [], _busy(), time.perf_counter_ns()
    while True:
        x = batch[len(samples) % n : len(samples) % n + 1]
        a = time.perf_counter_ns()
        run(x)
        samples.append(time.perf_counter_ns() - a)
        el = time.perf_counter_ns() - t0
        if (len(samples) >= min_count and el >= min_time_s * 1e9) or el >= max_time_s * 1e9:
            break
    wall, b1 = (time.perf_counter_ns() - t0) / 1e9, _busy()
    bg = max(0.0, ((b1[0] - b0[0]) - (b1[1] - b0[1])) / wall) if b0 and b1 and wall > 0 else None
    return {"samples_ns": samples, "warmup_calls": i, "wall_s": wall, "background_load_cores": bg}


def self_check(args) -> dict:
    out = {"bad_files": check_sums(HERE), "environment": _environment()}
    m = Model(threads=args.threads)
    ref = m.manifest["reference"]
    ref_imgs = [HERE / p for p in ref["images"]]
    x = preprocess(ref_imgs, m.spec)
    stored = np.load(HERE / ref["inputs"])
    out.update(m.describe())
    out["preprocess_max_abs_diff"] = float(np.abs(x - stored).max())
    out["reference_outputs"] = next(iter(m.run(x).values())).tolist()
    sample = Path(args.sample) if args.sample else HERE / ref["sample"]
    with np.load(sample) as z:
        images = z["x"]
    logits = next(iter(m.run(preprocess(list(images), m.spec)).values()))
    out["sample_file"], out["sample_predictions"] = sample.name, logits.argmax(1).tolist()
    if args.min_count > 0:
        out["latency"] = bench(m, x, warmup_s=args.warmup_s, warmup_runs=args.warmup_runs, min_time_s=args.min_time,
                               min_count=args.min_count, max_time_s=args.max_time)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run this bundle's model on images; prints JSON.")
    ap.add_argument("images", nargs="*", help="image files (PNG, JPEG, ...)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--check", action="store_true", help="checksums, reference outputs, sample, latency (edgetl verify)")
    ap.add_argument("--sample", help="an .npz of uint8 images (x) to predict in --check, instead of the bundled one")
    ap.add_argument("--warmup-s", type=float, default=0.5)
    ap.add_argument("--warmup-runs", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--min-count", type=int, default=100, help="timed calls in --check (0: no latency)")
    ap.add_argument("--max-time", type=float, default=120.0)
    args = ap.parse_args(argv)
    try:
        if args.check:
            print(json.dumps(self_check(args)))
            return 0
        return _predict_cli(ap, args)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _predict_cli(ap, args) -> int:
    if not args.images:
        ap.error("give at least one image, or --check")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"error: image not found: {missing[0]}", file=sys.stderr)
        return 2
    m = Model(threads=args.threads)
    try:
        preds = m.predict(args.images, top_k=args.top_k)
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        print(f"error: cannot read image: {e}", file=sys.stderr)
        return 2
    print(json.dumps({**m.describe(), "results": [{"image": p, **r} for p, r in zip(args.images, preds, strict=True)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
