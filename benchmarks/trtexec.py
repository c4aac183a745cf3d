"""trtexec's output, parsed into edgetl's result format, for boards that have TensorRT but no Python stack.

trtexec (``--loadEngine=E --warmUp=MS --duration=S --iterations=N --exportTimes=T.json``) writes a JSON list
with one record per inference: ``startEnqMs``/``endEnqMs``, ``startH2dMs``/``endH2dMs``,
``startComputeMs``/``endComputeMs``, ``startD2hMs``/``endD2hMs`` (offsets from the start of the run), and
``h2dMs``, ``computeMs``, ``d2hMs``, ``latencyMs`` (= H2D + compute + D2H), ``endToEndMs``. The trace includes the
warm-up queries; trtexec itself drops those whose compute started before ``warmUp`` ms, and so does
:func:`latencies`. Its log ends with summary lines such as
``Latency: min = 1.2 ms, max = 2.0 ms, mean = 1.3 ms, median = 1.3 ms, percentile(90%) = 1.4 ms, ...``,
parsed by :func:`parse_log` as a cross-check and for the throughput and versions.

Example::

    res = result_from_trtexec(json.loads(times), log_text, artifact="model.engine", warmup_ms=200)
    res.latency_ms.p90
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from benchmarks.harness import BenchResult
from benchmarks.stats import LatencyStats
from edgetl.errors import ConfigError

__all__ = ["latencies", "parse_log", "result_from_trtexec", "trtexec_command"]

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_SUMMARY = re.compile(r"(Latency|GPU Compute Time|H2D Latency|D2H Latency|Enqueue Time|Host Latency|Total Host Walltime"
                      r"|Total GPU Compute Time):\s*(.*)$")
_FIELD = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*" + _NUM + r"\s*ms")
_THROUGHPUT = re.compile(r"Throughput:\s*" + _NUM + r"\s*qps")
_TRT_VERSION = re.compile(r"TensorRT version:\s*([\d.]+)|\[TensorRT v(\d+)\]")
_DEVICE = re.compile(r"Selected Device:\s*(.+)$")


def trtexec_command(exe: str, engine: str, times_file: str, *, warmup_ms: int = 200, duration_s: float = 3.0,
                    iterations: int = 100, extra: list[str] | None = None) -> str:
    """The shell command that measures ``engine`` for at least ``duration_s`` and ``iterations``."""
    args = [f"--loadEngine={engine}", f"--warmUp={int(warmup_ms)}", f"--duration={max(1, round(duration_s))}",
            f"--iterations={int(iterations)}", f"--exportTimes={times_file}", *(extra or [])]
    return " ".join([exe, *(shlex.quote(a) for a in args)])


def latencies(records: Any, *, warmup_ms: float = 0.0, key: str = "latencyMs") -> list[float]:
    """Per-inference times (ms) from an ``--exportTimes`` list, warm-up queries dropped."""
    if not isinstance(records, list) or not records:
        raise ConfigError("trtexec times: expected a non-empty JSON list of per-inference records")
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or key not in r:
            raise ConfigError(f"trtexec times: record {i} has no {key!r} (keys: {sorted(r) if isinstance(r, dict) else r})")
        if float(r.get("startComputeMs", warmup_ms)) >= warmup_ms:
            out.append(float(r[key]))
    if not out:
        raise ConfigError(f"trtexec times: every record started within the {warmup_ms} ms warm-up")
    return out


def parse_log(text: str) -> dict[str, Any]:
    """Summary statistics (ms), throughput (qps), TensorRT version and device name from a trtexec log."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = _SUMMARY.search(line)
        if m:
            fields = {}
            for f in _FIELD.finditer(m.group(2)):
                name = f"p{float(f.group(2)):g}" if f.group(2) else f.group(1)
                fields[name] = float(f.group(3))
            if fields:
                out[m.group(1).lower().replace(" ", "_")] = fields
            continue
        if (m := _THROUGHPUT.search(line)) is not None:
            out["throughput_qps"] = float(m.group(1))
        elif (m := _TRT_VERSION.search(line)) is not None and (m.group(1) or "tensorrt_version" not in out):
            if m.group(1):
                out["tensorrt_version"] = m.group(1)
            else:  # "[TensorRT v100300]" encodes major * 10000 + minor * 100 + patch
                n = int(m.group(2))
                out["tensorrt_version"] = f"{n // 10000}.{n // 100 % 100}.{n % 100}"
        elif (m := _DEVICE.search(line)) is not None:
            out["gpu"] = m.group(1).strip()
    return out


def result_from_trtexec(records: Any, log_text: str = "", *, artifact: str, path: str | None = None,
                        warmup_ms: float = 200.0, batch: int = 1, device: str = "local", host: str = "local",
                        precision: str = "as-built", env: dict[str, Any] | None = None,
                        config: dict[str, Any] | None = None) -> BenchResult:
    """A :class:`BenchResult` from trtexec's per-inference times (latency = H2D + compute + D2H)."""
    lat = latencies(records, warmup_ms=warmup_ms)
    compute = latencies(records, warmup_ms=warmup_ms, key="computeMs") if "computeMs" in records[0] else None
    summary = parse_log(log_text) if log_text else {}
    kept = [r for r in records if float(r.get("startComputeMs", warmup_ms)) >= warmup_ms]
    span_ms = float(kept[-1].get("endD2hMs", 0)) - float(kept[0].get("startH2dMs", 0)) if kept else 0.0
    throughput = summary.get("throughput_qps") or (batch * len(lat) / (span_ms / 1e3) if span_ms > 0 else 0.0)
    env = dict(env or {})
    for k in ("tensorrt_version", "gpu"):
        if k in summary:
            env[k] = summary[k]
    return BenchResult(
        artifact=artifact, path=path, format="tensorrt", runtime="trtexec", precision=precision, batch=batch,
        threads=None, latency_ms=LatencyStats.from_samples(lat),
        runtime_latency_ms=LatencyStats.from_samples(compute) if compute else None,
        throughput=float(throughput), device=device, host=host, tool="trtexec", inputs="trtexec (its own inputs)",
        runner={"runtime": "trtexec", "summary": summary, "records": len(records), "warmup_ms": warmup_ms},
        config=dict(config or {}), env=env,
    )
