"""The bundle's README (the three commands that matter on the board) and the Android integration note."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["android_note", "board_readme", "engine_readme"]


def _measured(m: dict[str, Any]) -> list[str]:
    meas = m.get("measured") or {}
    lines = []
    if meas.get("p90_ms") is not None:
        acc = f", top-1 {100 * meas['accuracy']:.2f} %" if meas.get("accuracy") is not None else ""
        teacher = (f" (teacher {100 * meas['teacher_accuracy']:.2f} %)" if meas.get("teacher_accuracy") is not None
                   else "")
        lines.append(f"Measured by `edgetl run` on {meas.get('device')}: p90 {meas['p90_ms']:.3f} ms{acc}{teacher}. "
                     "Those numbers are from the packaging run; `edgetl verify` measures them on the board.")
    if meas.get("unsettled"):
        lines.append(f"Warning: {meas['unsettled']}.")
    ref = m["reference"]
    acc = ref["sample_accuracy"]
    lines.append(f"Reference sample: {ref['sample_size']} images of {ref['dataset']}; source top-1 "
                 f"{100 * acc['source']:.2f} %"
                 + (f", this artifact here {100 * acc['artifact_here']:.2f} %" if acc.get("artifact_here") is not None
                    else "") + ".")
    return lines


def _preprocessing(p: dict[str, Any]) -> str:
    r = p["resize"]
    return (f"convert to {p['color_mode']}, scale to [0, 1], {p['channel_conversion']} ({p['source_channels']} -> "
            f"{p['channels']} channels), resize to {p['size'][0]}x{p['size'][1]} ({r['method']}, antialias "
            f"{r['antialias']}, align_corners {r['align_corners']}, {r['when']}), no crop, (x - mean) / std with "
            f"mean {p['mean']} and std {p['std']}, {p['layout']} {p['dtype']}")


def board_readme(m: dict[str, Any], profile) -> str:
    model = m["model"]
    trt = any(r["runtime"] == "tensorrt" for r in m["runs"])
    lines = [f"# {model['file']} for {profile.name}", "",
             f"{model['format']} model ({model['precision']}) run by {model['runtime']}; {len(m['labels'])} labels in "
             "`labels.txt`; everything else (inputs, outputs, preprocessing, history, versions) in `manifest.json`.",
             ""]
    if m.get("mobile"):
        return "\n".join([*lines, "```sh", "sha256sum -c SHA256SUMS      # every file as packaged",
                           "cat ANDROID.md               # the runtime library, the file to load, the tensor to feed",
                           "edgetl verify BUNDLE         # on a computer: the reference outputs with edgetl's runner",
                           "```", "", *_measured(m), "", "Preprocessing (reproduce it in the app exactly): "
                           f"{_preprocessing(m['preprocessing'])}.", ""])
    lines += ["On the board:", "", "```sh"]
    venv = "python3 -m venv venv"
    if m["device"].get("python_note"):
        lines.append(f"# {m['device']['python_note']}")
        venv = "python3 -m venv --system-site-packages venv"
    lines += [f"{venv} && venv/bin/pip install -r requirements.txt   # the runtime, numpy, pillow: no "
              "torch, no edgetl",
              "sha256sum -c SHA256SUMS                                            # every file as packaged"]
    if trt:
        lines.append("./model/build.sh                                                   # the TensorRT engine, "
                     "built for this GPU and TensorRT")
    lines += ["venv/bin/python run.py IMAGE.png                                   # top-5 with labels, as JSON",
              "```", "",
              "`from run import Model; Model().predict(['IMAGE.png'])` does the same in Python. From the machine that "
              "packaged it, `edgetl verify BUNDLE --host user@board --python '~/venv/bin/python'` (the board's venv) copies the bundle, checks the checksums, the "
              "reference outputs (within the tolerance of its precision), fidelity on the sample and latency, and "
              "stores the result under this device.", ""]
    if m["device"].get("max_onnx_opset"):
        lines += [f"The ONNX is opset <= {m['device']['max_onnx_opset']}: JetPack {m['device'].get('jetpack')} "
                  "parses it.", ""]
    lines += [*_measured(m), "", f"Preprocessing (as `run.py` does it, reproducing edgetl's training pipeline): "
              f"{_preprocessing(m['preprocessing'])}.", ""]
    return "\n".join(lines)


def engine_readme(m: dict[str, Any]) -> str:
    """model/README.md of a TensorRT bundle (replaces the exporter's, which points at edgetl on the board)."""
    engine = next(r["file"] for r in m["runs"] if r["runtime"] == "tensorrt")
    return (f"`./build.sh` (run on the board) builds `{Path(engine).name}` from `model.onnx` with the board's trtexec; "
            "the flags are in the script. Until it exists, `../run.py` runs `model.onnx` with ONNX Runtime on the "
            "CPU and says so. The ONNX is opset <= "
            f"{m['device'].get('max_onnx_opset')}, which JetPack {m['device'].get('jetpack')} parses.\n")


def android_note(m: dict[str, Any]) -> str:
    model = m["model"]
    inp = m["inputs"][0]
    v = m["versions"]
    if model["format"] == "executorch":
        runtime = (f"ExecuTorch's Android library (Gradle `org.pytorch:executorch-android`, the release matching "
                   f"executorch {v.get('executorch', '?')} that wrote this program; XNNPACK backend)")
        load = ("`Module module = Module.load(path);` then `EValue[] out = module.forward(EValue.from(Tensor."
                "fromBlob(floats, new long[]{1, C, H, W})));` and `out[0].toTensor().getDataAsFloatArray()`")
    else:
        runtime = (f"ONNX Runtime Mobile (Gradle `com.microsoft.onnxruntime:onnxruntime-android`, >= "
                   f"{v.get('onnxruntime', '?')}, which reads the ORT format)")
        load = ("`OrtSession s = OrtEnvironment.getEnvironment().createSession(modelBytes, new OrtSession."
                "SessionOptions());` then `s.run(Map.of(\"" + inp["name"] + "\", OnnxTensor.createTensor(env, "
                "FloatBuffer.wrap(floats), new long[]{1, C, H, W})))`")
    return "\n".join([
        f"# Using {model['file']} in an Android app", "",
        f"1. Add {runtime} to the app's dependencies.",
        f"2. Copy `{model['file']}` and `labels.txt` into the app's assets; check them against `SHA256SUMS`.",
        f"3. Load it: {load}.",
        f"4. Feed a float32 {inp['shape']} {m['preprocessing']['layout']} tensor preprocessed exactly as "
        "`manifest.json` → `preprocessing` says; `reference/images/*.png` with `reference/inputs.npy` are the "
        "tensors your preprocessing must reproduce (within 1e-5), and `reference/source_outputs.npy` the outputs "
        f"to expect (tolerance in `manifest.json` → `reference.tolerance`).",
        "5. The output is one logit per label, in `labels.txt` order; softmax then argmax for the class.", ""])
