"""A package outside the tree adds a criterion, an exporter, a runtime and a quantizer, with no edit to edgetl.

The plug-in is written here into ``tmp_path`` as a real distribution (its modules plus a ``*.dist-info`` with
``METADATA`` and ``entry_points.txt``) and put on the path (``sys.path`` in-process, ``PYTHONPATH`` for the CLI).
Each piece is then used through the ordinary commands on a small real model: edgetl's TinyCNN trained on
sklearn digits for a few epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli_here

ROOT = Path(__file__).resolve().parents[1]

# One module per piece: what a contributor writes. The entry point lines below are the "table row".
PLUGIN = {
    "toyplug/__init__.py": '"""edgetl plug-ins for the test: one module per piece."""\n',
    "toyplug/criterion.py": '''
        import os

        import torch
        import torch_pruning as tp


        class ReverseL1(tp.importance.GroupMagnitudeImportance):
            """Scores channels by MINUS their L1 norm: prunes the strongest filters (a criterion edgetl lacks)."""

            def __init__(self):
                super().__init__(p=1)

            def __call__(self, group):
                with open(os.environ["TOYPLUG_LOG"], "a") as f:
                    f.write("criterion\\n")
                scores = super().__call__(group)
                return None if scores is None else -scores
        ''',
    "toyplug/exporter.py": '''
        import torch

        from edgetl.artifact import Format, StageRecord
        from edgetl.formats import ExportSpec, Precision

        SPEC = ExportSpec("onnx-legacy", Format.ONNX, ".onnx", (Format.TORCH,), None, frozenset({"opset"}),
                          (Precision.FP32,), "onnx", ("onnx",), "toyplug.exporter:export_legacy",
                          "ONNX through torch's TorchScript-based exporter")


        def export_legacy(artifact, out, options):
            example = torch.zeros(artifact.input_spec.batch_shape(1))
            torch.onnx.export(artifact.model.eval(), (example,), str(out), dynamo=False, opset_version=options.opset or 17,
                              input_names=["input"], output_names=["logits"])
            record = StageRecord(stage="export", options={"format": "onnx-legacy", "exporter": "torchscript"})
            return artifact.with_stage(record, path=out, format=Format.ONNX)
        ''',
    "toyplug/runtime.py": '''
        import numpy as np

        from edgetl.artifact import Format
        from edgetl.runtimes.base import Runtime


        class ReferenceRuntime(Runtime):
            """ONNX's own reference evaluator (pure numpy): a second opinion on any ONNX file."""

            runtime = "onnx-reference"
            formats = (Format.ONNX,)

            def __init__(self, artifact, options):
                super().__init__(artifact, options)
                import onnx
                from onnx.reference import ReferenceEvaluator

                proto = onnx.load(str(artifact.path))
                self.session = ReferenceEvaluator(proto)
                self.input_name = self.session.input_names[0]
                first = proto.graph.input[0].type.tensor_type.shape.dim[0]
                self.fixed_batch = first.dim_value or None  # a static batch: evaluation feeds it in chunks

            def run(self, batch):
                return np.asarray(self.session.run(None, {self.input_name: batch})[0])

            def describe(self):
                return {"runtime": self.runtime, "threads": None, "precision": "as-stored"}
        ''',
    "toyplug/quantizer.py": '''
        from edgetl.artifact import Format
        from edgetl.quantize.backends import QuantizerBackend


        class DynamicOnnx(QuantizerBackend):
            """ONNX Runtime's weight-only dynamic int8, as a third-party backend."""

            name = "toy-dynamic"
            sources = (Format.TORCH, Format.ONNX)
            output = Format.ONNX

            def build(self, exclude):
                from onnxruntime.quantization import QuantType, quantize_dynamic

                self.n += 1
                out = self.work / f"toy{self.n}.onnx"
                quantize_dynamic(str(self.reference), str(out), weight_type=QuantType.QInt8,
                                 nodes_to_exclude=list(exclude))
                return out, {"tool": "onnxruntime quantize_dynamic"}
        ''',
}
ENTRY_POINTS = """\
[edgetl.criteria]
reverse-l1 = toyplug.criterion:ReverseL1

[edgetl.exporters]
onnx-legacy = toyplug.exporter:SPEC

[edgetl.runtimes]
onnx-reference = toyplug.runtime:ReferenceRuntime

[edgetl.quantizers]
toy-dynamic = toyplug.quantizer:DynamicOnnx
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for rel, text in PLUGIN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip())
    info = root / "toyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory, digits) -> Path:
    """edgetl's TinyCNN trained on digits at 32x32 for a few epochs (seconds): a small real classifier."""
    import torch

    from edgetl.artifact import Artifact, InputSpec, StageRecord
    from edgetl.data import iterate
    from edgetl.models import build_arch, save_model

    torch.manual_seed(0)
    spec = InputSpec(shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, source_channels=1)
    model = build_arch("edgetl_tinycnn", num_classes=10).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):
        for x, y in iterate(digits.train, spec, batch_size=64, shuffle=True, seed=0):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    art = Artifact(format="torch", model=model.eval(), arch="edgetl_tinycnn", input_spec=spec,
                   labels=digits.classes, history=[StageRecord(stage="train", options={"data": "digits"})])
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_model(art, path)
    return path


def _cli(plugin_dir: Path, log: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)]), "TOYPLUG_LOG": str(log)}
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _cli_here(plugin_dir: Path, log: Path, *args: str) -> subprocess.CompletedProcess:
    """:func:`_cli` in this process: the plug-in's distribution first on ``sys.path`` (edgetl reads entry points
    per ``sys.path``) and its log named in the environment for the call only. The listing test keeps a fresh
    process: discovery at start-up is its point."""
    saved_path, saved_log = sys.path[:], os.environ.get("TOYPLUG_LOG")
    sys.path.insert(0, str(plugin_dir))
    os.environ["TOYPLUG_LOG"] = str(log)
    try:
        return run_cli_here(*args)
    finally:
        sys.path[:] = saved_path
        if saved_log is None:
            os.environ.pop("TOYPLUG_LOG", None)
        else:
            os.environ["TOYPLUG_LOG"] = saved_log


def _ok(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_plugins_are_listed_with_their_origin(plugin_dir, tmp_path):
    res = _ok(_cli(plugin_dir, tmp_path / "log", "plugins", "--json"))
    mine = {(p["kind"], p["name"]): p for p in res["plugins"] if "toyplug" in p["origin"]}
    assert set(mine) == {("criterion", "reverse-l1"), ("exporter", "onnx-legacy"), ("runtime", "onnx-reference"),
                         ("quantizer", "toy-dynamic")}
    assert all(p["origin"].endswith("of toyplug 0.1") and not p["shadowed"] for p in mine.values())
    builtin = {(p["kind"], p["name"]) for p in res["plugins"] if p["origin"] == "built-in"}
    assert {("criterion", "lrp"), ("exporter", "onnx"), ("runtime", "openvino"), ("quantizer", "openvino")} <= builtin


def test_in_process_registries_see_the_plugin(plugin_dir, monkeypatch):
    from edgetl.registry import criteria, exporters, quantizers, runtimes

    assert "reverse-l1" not in criteria()
    monkeypatch.syspath_prepend(str(plugin_dir))
    assert "reverse-l1" in criteria() and "onnx-legacy" in exporters()
    assert runtimes().load("onnx-reference").formats[0].value == "onnx"
    assert quantizers().load("toy-dynamic").name == "toy-dynamic"


def test_prune_with_the_plugins_criterion(plugin_dir, tiny_digits, tmp_path):
    log = tmp_path / "log"
    out = tmp_path / "pruned.pt"
    res = _ok(_cli_here(plugin_dir, log, "prune", str(tiny_digits), "--data", "digits", "--criterion", "reverse-l1",
                        "--ratio", "0.5", "--round-to", "1", "-o", str(out), "--json"))
    assert res["criterion"] == "reverse-l1"
    assert log.read_text().count("criterion") >= 3  # torch-pruning asked the plug-in for every group's scores
    assert res["params_after"] < 0.75 * res["params_before"] and out.exists()


def test_export_with_the_plugins_exporter_is_parity_checked(plugin_dir, tiny_digits, tmp_path):
    out = tmp_path / "deploy"
    res = _ok(_cli_here(plugin_dir, tmp_path / "log", "export", str(tiny_digits), "--format", "onnx-legacy,onnx",
                        "-o", str(out), "--json"))
    rows = {r["format"]: r for r in res["exports"]}
    assert set(rows) == {"onnx-legacy", "onnx"} and res["failed"] == {}
    legacy = rows["onnx-legacy"]
    # two targets with one suffix: two files, the built-in keeps the plain name
    assert Path(legacy["path"]).name == "tiny_onnx-legacy.onnx" and Path(rows["onnx"]["path"]).name == "tiny.onnx"
    assert legacy["artifact_format"] == "onnx" and Path(legacy["path"]).exists()
    assert Path(legacy["path"]).read_bytes() != Path(rows["onnx"]["path"]).read_bytes()
    assert legacy["parity"]["checked"] and legacy["parity"]["runtime"] == "onnxruntime"
    assert legacy["parity"]["max_rel_error"] < 1e-4 and legacy["parity"]["top1_agreement"] == 1.0
    assert "digits" in legacy["parity"]["inputs"]  # real images, from the model's recorded dataset


def test_eval_in_the_plugins_runtime_agrees_with_onnxruntime(plugin_dir, tiny_digits, tmp_path):
    out = tmp_path / "deploy"
    _ok(_cli_here(plugin_dir, tmp_path / "log", "export", str(tiny_digits), "--format", "onnx", "-o", str(out),
                  "--no-parity", "--json"))
    onnx_file = str(out / "tiny.onnx")
    ref = _ok(_cli_here(plugin_dir, tmp_path / "log", "eval", onnx_file, "--data", "digits", "--runtime",
                        "onnx-reference", "--json"))
    ort = _ok(_cli_here(plugin_dir, tmp_path / "log", "eval", onnx_file, "--data", "digits", "--json"))
    assert ref["runtime"]["runtime"] == "onnx-reference" and ort["runtime"]["runtime"] == "onnxruntime"
    assert ref["samples"] == ort["samples"] > 100
    assert ort["accuracy"] > 0.5  # the model learned the task, so agreement below means something
    assert abs(ref["accuracy"] - ort["accuracy"]) <= 1 / ref["samples"] + 1e-9
    bad = _cli_here(plugin_dir, tmp_path / "log", "eval", onnx_file, "--data", "digits", "--runtime", "onnx-refrence")
    assert bad.returncode == 2 and "did you mean 'onnx-reference'" in bad.stderr


def test_quantize_with_the_plugins_backend(plugin_dir, tiny_digits, tmp_path):
    import onnx

    out = tmp_path / "tiny.int8.onnx"
    res = _ok(_cli_here(plugin_dir, tmp_path / "log", "quantize", str(tiny_digits), "--data", "digits", "--backend",
                        "toy-dynamic", "-o", str(out), "--json"))
    assert res["backend"] == "toy-dynamic" and res["backend_info"]["tool"] == "onnxruntime quantize_dynamic"
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}, ops
    assert res["accuracy_before"] > 0.5 and res["drop_points"] < 10  # measured against fp32 on the val split
    assert Path(str(out) + ".edgetl.json").exists()  # reloadable with its metadata


def test_a_plugin_cannot_replace_a_builtin_and_a_broken_one_is_named(tmp_path, monkeypatch):
    from edgetl.errors import ConfigError
    from edgetl.prune.criteria import LRPCriterion
    from edgetl.registry import criteria, runtimes

    site = tmp_path / "site"
    (site / "badplug-2.0.dist-info").mkdir(parents=True)
    (site / "badplug.py").write_text("NOT_A_RUNTIME = 42\n")
    (site / "badplug-2.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 2.0\n")
    (site / "badplug-2.0.dist-info" / "entry_points.txt").write_text(
        "[edgetl.criteria]\nlrp = badplug:NOT_A_RUNTIME\n\n[edgetl.runtimes]\nbad = badplug:NOT_A_RUNTIME\n"
        "missing = badplug_gone:Runtime\n")
    monkeypatch.syspath_prepend(str(site))
    shadow = criteria().entries()["lrp (badplug 2.0)"]
    assert shadow.shadowed and criteria().load("lrp") is LRPCriterion  # the built-in still answers
    with pytest.raises(ConfigError, match="must name a subclass of edgetl.runtimes.base.Runtime"):
        runtimes().load("bad")
    with pytest.raises(ConfigError, match=r"runtime plug-in 'missing' \(entry point .* of badplug 2.0\) cannot be "
                                          "imported"):
        runtimes().load("missing")
