"""Device profiles name plug-in runtimes too: a runtime registered in-process (a distribution on ``sys.path``
with its ``edgetl.runtimes`` entry point) is chosen by ``DeviceProfile.runtime_for`` and measured through
what it declares on the :class:`~edgetl.runtimes.base.Runtime` base (``own_clock``, ``fixed_batch``), in the
single measurement and in interleaved rounds alike.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from bench_exports import export_onnx

RUNTIME = '''
import time

import numpy as np

from edgetl.artifact import Format
from edgetl.runtimes.base import Runtime


class TimedOrt(Runtime):
    """ONNX Runtime under another name, keeping its own clock: the time spent inside session.run."""

    runtime = "timed-ort"
    formats = (Format.ONNX,)
    own_clock = True

    def __init__(self, artifact, options):
        super().__init__(artifact, options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads or 1
        self.session = ort.InferenceSession(str(artifact.path), sess_options=so, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        self.calls = 0

    def run(self, batch):
        t = time.perf_counter_ns()
        out = self.session.run(None, {self.input_name: batch})[0]
        self.last_latency_ms = (time.perf_counter_ns() - t) / 1e6
        self.calls += 1
        return np.asarray(out)

    def describe(self):
        return {"runtime": self.runtime, "threads": self.options.threads, "calls": self.calls}
'''
QUICK = {"warmup_runs": 2, "warmup_s": 0.0, "min_time_s": 0.05, "min_count": 12, "max_time_s": 30.0, "threads": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "timedplug.py").write_text(textwrap.dedent(RUNTIME).lstrip())
    info = root / "timedplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: timedplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[edgetl.runtimes]\ntimed-ort = timedplug:TimedOrt\n")
    return root


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    """edgetl's TinyCNN at 3x16x16 as ONNX with a dynamic batch, and a copy whose batch is fixed at 1."""
    import onnx

    from edgetl.models import load_model

    art = load_model("edgetl_tinycnn", num_classes=10)
    art = dataclasses.replace(art, input_spec=dataclasses.replace(art.input_spec, shape=(3, 16, 16)))
    dynamic = export_onnx(art, tmp_path_factory.mktemp("onnx"))
    static = dynamic.with_name("static.onnx")
    m = onnx.load(str(dynamic))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(static))
    sidecar = dynamic.with_name(dynamic.name + ".edgetl.json")
    static.with_name(static.name + ".edgetl.json").write_text(sidecar.read_text())
    return {"dynamic": dynamic, "static": static}


def _profile(runtimes):
    from benchmarks.profiles import parse_profile

    return parse_profile({"name": "with-plugin", "formats": ["onnx"], "runtimes": runtimes}, path="with-plugin.yaml")


def test_a_profile_picks_a_runtime_registered_by_a_plugin(site, monkeypatch):
    from edgetl.artifact import Format
    from edgetl.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown runtime 'timed-ort'"):
        _profile(["timed-ort", "onnxruntime"])  # not installed yet: not a runtime
    monkeypatch.syspath_prepend(str(site))
    assert _profile(["timed-ort", "onnxruntime"]).runtime_for(Format.ONNX) == "timed-ort"
    assert _profile(["onnxruntime", "timed-ort"]).runtime_for(Format.ONNX) == "onnxruntime"  # the profile's order
    with pytest.raises(UnknownNameError, match="did you mean 'timed-ort'"):
        _profile(["timed-orr"])


def test_the_plugin_runtimes_own_clock_is_read_in_both_measurement_paths(site, onnx_files, monkeypatch):
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.interleave import Candidate, InterleaveConfig, measure_interleaved
    from edgetl.models import load_model

    monkeypatch.syspath_prepend(str(site))
    prof = _profile(["timed-ort"])
    r = measure(load_model(str(onnx_files["dynamic"])), BenchConfig(**QUICK), profile=prof)
    assert r.runtime == "timed-ort" and r.device == "with-plugin"
    # one runtime-side sample per timed call, each no longer than the wall time around the call
    assert r.runtime_latency_ms is not None and r.runtime_latency_ms.count == r.latency_ms.count >= 12
    assert 0 < r.runtime_latency_ms.p50 <= r.latency_ms.p50
    assert r.runner["calls"] == 1 + r.runner["warmup_calls"] + r.latency_ms.count  # first call, warm-up, timed
    run = measure_interleaved([Candidate(load_model(str(onnx_files["dynamic"])))], BenchConfig(**QUICK),
                              profile=prof, interleave=InterleaveConfig(rounds=2, max_extra_rounds=0))
    (res,) = run.results
    assert res.runtime == "timed-ort" and res.runtime_latency_ms.count == res.latency_ms.count >= 12


def test_the_plugin_runtimes_fixed_batch_is_refused_in_both_measurement_paths(site, onnx_files, monkeypatch):
    from benchmarks.harness import BenchConfig, measure
    from benchmarks.interleave import Candidate, measure_interleaved
    from edgetl.errors import ConfigError
    from edgetl.models import load_model

    monkeypatch.syspath_prepend(str(site))
    prof = _profile(["timed-ort"])
    config = BenchConfig(**{**QUICK, "batch": 2})
    assert measure(load_model(str(onnx_files["dynamic"])), config, profile=prof).batch == 2
    with pytest.raises(ConfigError, match="static batch of 1; bench it with --batch 1"):
        measure(load_model(str(onnx_files["static"])), config, profile=prof)
    with pytest.raises(ConfigError, match="static batch of 1"):
        measure_interleaved([Candidate(load_model(str(onnx_files["static"])))], config, profile=prof)
    assert measure(load_model(str(onnx_files["static"])), BenchConfig(**QUICK), profile=prof).batch == 1
