"""int8 vs fp32 per backend, and edgetl's int8 vs the plain quantizer defaults: latency and accuracy.

For each model (the reference teacher, and ``--student`` when given) and each backend:

* ONNX Runtime: fp32 ONNX; edgetl int8 (static QDQ, types chosen for this CPU, per-channel, calibration
  "auto"); plain ``quantize_static`` defaults (S8S8, per-tensor, MinMax) after ``quant_pre_process``;
* TensorRT: the Q/DQ ONNX for TensorRT, accuracy only (run in ONNX Runtime; TensorRT is not installed here);
* OpenVINO: fp32 IR (true f32 execution); edgetl int8 (NNCF, preset from the activations, CPU target);
  plain ``nncf.quantize`` with nothing but the dataset;
* ExecuTorch (XNNPACK): the fp32 program; edgetl PT2E int8 (``XNNPACKQuantizer``, per-channel).

All variants are calibrated on the same 300 stratified training images and evaluated on the same test split.
Latency: batch 1, 2 threads, single stream, via ``benchmarks.harness.measure``, the variants interleaved
``--repeats`` times (A B C A B C ...) in one process; the table gives the median over repeats of each run's p50,
and each int8 model's speed-up over its own runtime's fp32 from the same run. Results: JSON + markdown in
``benchmarks/results/``.

Run it alone on an idle machine (it measures latency)::

    flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.quantize --teacher demo-out/teacher.pt
    flock /tmp/edgetl-bench.lock .venv/bin/python -m benchmarks.suites.quantize --quick    # smoke test only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path


def _variants(name: str, source: str, data, work: Path, calib_samples: int) -> list[dict]:
    from edgetl.artifact import Format
    from edgetl.models import load_model
    from edgetl.quantize import QuantizeConfig, quantize, select_calibration
    from edgetl.quantize import onnxruntime as qo
    from edgetl.quantize import openvino as qv
    from edgetl.stages import StageContext
    from exporters.base import write_metadata
    from exporters.onnx import export_onnx
    from exporters.openvino import export_openvino

    art = load_model(source)
    calib = select_calibration(data, samples=calib_samples).batch(art.input_spec)
    out: list[dict] = []
    onnx_fp32 = export_onnx(art, work / f"{name}.fp32.onnx")
    write_metadata(onnx_fp32)
    out.append({"model": name, "backend": "onnxruntime", "variant": "fp32", "artifact": onnx_fp32})
    q = quantize(art, QuantizeConfig(backend="onnxruntime", calib_samples=calib_samples), data=data,
                 ctx=StageContext(output=work / f"{name}.ort.int8.onnx"))
    info = q.history[-1].metrics["backend_info"]
    out.append({"model": name, "backend": "onnxruntime", "variant": "int8 edgetl", "artifact": q,
                "types": f"{info.get('types')}, {info.get('calibration')}"})
    pre = work / f"{name}.pre.onnx"
    qo.preprocess(onnx_fp32.path, pre)
    plain = work / f"{name}.ort.int8.defaults.onnx"
    qo.quantize_static_onnx(pre, plain, calib, types=qo.choose_ort_types(), plain_defaults=True)
    out.append({"model": name, "backend": "onnxruntime", "variant": "int8 quantize_static defaults",
                "artifact": _with_path(onnx_fp32, plain, Format.ONNX), "types": "s8s8 per-tensor"})

    # TensorRT-ready Q/DQ ONNX: accuracy only, run in ONNX Runtime against the same fp32 ONNX (its latency
    # there says nothing about TensorRT, which is not installed here).
    q = quantize(art, QuantizeConfig(backend="tensorrt", calib_samples=calib_samples), data=data,
                 ctx=StageContext(output=work / f"{name}.trt.qdq.onnx"))
    out.append({"model": name, "backend": "tensorrt", "baseline_backend": "onnxruntime", "timed": False,
                "variant": "int8 Q/DQ (accuracy in onnxruntime)", "artifact": q,
                "types": f"s8s8 symmetric, {q.history[-1].metrics['backend_info'].get('calibration')}"})

    ov_fp32 = export_openvino(art, work / f"{name}.fp32.xml")
    write_metadata(ov_fp32)
    out.append({"model": name, "backend": "openvino", "variant": "fp32", "artifact": ov_fp32})
    q = quantize(art, QuantizeConfig(backend="openvino", calib_samples=calib_samples), data=data,
                 ctx=StageContext(output=work / f"{name}.ov.int8.xml"))
    out.append({"model": name, "backend": "openvino", "variant": "int8 edgetl", "artifact": q,
                "types": q.history[-1].metrics["backend_info"].get("preset")})
    import openvino as ov

    plain_model, _ = qv.quantize_ov(ov.Core().read_model(str(ov_fp32.path)), calib, plain_defaults=True)
    plain_xml = work / f"{name}.ov.int8.defaults.xml"
    ov.save_model(plain_model, str(plain_xml), compress_to_fp16=False)
    out.append({"model": name, "backend": "openvino", "variant": "int8 nncf.quantize defaults",
                "artifact": _with_path(ov_fp32, plain_xml, Format.OPENVINO), "types": "defaults"})

    # ExecuTorch / XNNPACK: the fp32 program against PT2E int8 (XNNPACKQuantizer, per-channel symmetric weights).
    from exporters.executorch import export_executorch

    et_fp32 = export_executorch(art, work / f"{name}.fp32.pte")
    write_metadata(et_fp32)
    out.append({"model": name, "backend": "executorch", "variant": "fp32", "artifact": et_fp32})
    q = quantize(art, QuantizeConfig(backend="pytorch", calib_samples=calib_samples), data=data,
                 ctx=StageContext(output=work / f"{name}.pt2e.int8.pte"))
    out.append({"model": name, "backend": "executorch", "variant": "int8 edgetl (PT2E)", "artifact": q,
                "types": "XNNPACK symmetric"})
    return out


def _with_path(art, path: Path, fmt):
    from dataclasses import replace

    from exporters.base import write_metadata

    new = replace(art, path=path, format=fmt, history=[*art.history])
    write_metadata(new)
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suites.quantize", description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="demo-out/teacher.pt")
    p.add_argument("--student", default=None, help="the LRP-pruned + distilled student checkpoint, if any")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time", type=float, default=5.0, help="seconds of timed calls per variant and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calib-samples", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help="smoke test: short timings, one repeat, 200 test images")
    args = p.parse_args(argv)

    import torch

    from benchmarks.harness import BenchConfig, environment, measure
    from edgetl.data import load_data
    from edgetl.evaluate import evaluate

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if not Path(args.teacher).exists():
        sys.exit(f"{args.teacher} not found: make it with `edgetl finetune --data mnist5k -o {args.teacher}`")
    data = load_data(args.data)
    repeats, seconds, limit = (1, 0.5, 200) if args.quick else (args.repeats, args.time, None)
    cfg = BenchConfig(batch=1, threads=args.threads, min_time_s=seconds, max_time_s=max(seconds * 4, 10),
                      min_count=20 if args.quick else 100, warmup_s=0.2 if args.quick else 1.0)
    models = [("teacher", args.teacher)] + ([("student", args.student)] if args.student else [])
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-quantize-") as tmp:
        rows = []
        for name, src in models:
            rows += _variants(name, src, data, Path(tmp), args.calib_samples)
        for r in rows:
            r["accuracy"] = evaluate(r["artifact"], data, split="test", limit=limit, threads=args.threads)["accuracy"]
        for _ in range(repeats):
            for r in rows:  # interleaved: drift hits every variant alike
                if not r.get("timed", True):
                    continue
                res = measure(r["artifact"], cfg)
                r.setdefault("p50", []).append(res.latency_ms.p50)
                r.setdefault("p90", []).append(res.latency_ms.p90)
                r["size_bytes"] = res.model_size_bytes
                r["precision_ran"] = res.precision
    results = []
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "fp32"
                    and b["backend"] == r.get("baseline_backend", r["backend"]))
        timed = r.get("timed", True)
        p50, base_p50 = (statistics.median(r["p50"]) if timed else None), statistics.median(base["p50"])
        results.append({k: v for k, v in r.items() if k != "artifact"} | {
            "p50_ms": p50, "p90_ms": statistics.median(r["p90"]) if timed else None,
            "speedup_vs_fp32": base_p50 / p50 if timed else None,
            "accuracy_drop_points": 100 * (base["accuracy"] - r["accuracy"])})
    command = "python -m benchmarks.suites.quantize " + shlex.join(argv if argv is not None else sys.argv[1:])
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"suite": "quantize", "command": command, "quick": args.quick, "data": args.data,
               "test_images": limit or len(data.test), "threads": args.threads, "repeats": repeats,
               "seconds_per_run": seconds, "env": environment(), "results": results}
    (out / f"quantize-{stamp}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"# int8 vs fp32 per backend ({'QUICK smoke test, not a measurement' if args.quick else 'measurement'})",
             "", f"Command: `{command}`  ", f"Batch 1, {args.threads} threads, p50 = median over {repeats} "
             f"interleaved runs of each run's p50; accuracy on {limit or len(data.test)} test images of {args.data}.",
             "", "| model | backend | variant | types | top-1 % | drop (points) | p50 ms | p90 ms | speed-up vs fp32 "
             "| size MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    def fmt(v, spec: str, unit: str = "") -> str:
        return "-" if v is None else f"{v:{spec}}{unit}"

    for r in results:
        lines.append(f"| {r['model']} | {r['backend']} | {r['variant']} | {r.get('types') or '-'} | "
                     f"{100 * r['accuracy']:.2f} | {r['accuracy_drop_points']:.2f} | {fmt(r['p50_ms'], '.3f')} | "
                     f"{fmt(r['p90_ms'], '.3f')} | {fmt(r['speedup_vs_fp32'], '.2f', 'x')} | "
                     f"{fmt(r.get('size_bytes') and r['size_bytes'] / 1e6, '.2f')} |")
    (out / f"quantize-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
