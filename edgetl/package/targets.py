"""What a bundle for each device holds: which format the model ships in, which runtime runs it, what to install.

Device profiles (``benchmarks/devices/*.yaml``) accept only the keys :class:`benchmarks.profiles.DeviceProfile`
knows, so the facts packaging needs beyond them (the JetPack and TensorRT versions, the highest ONNX opset the
board's TensorRT parser takes) live here, in one table keyed by profile name.

Example::

    target_for(load_profile("jetson-orin-nano")).max_onnx_opset   # 17
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetl.artifact import Format

__all__ = ["BOARD_FACTS", "BoardFacts", "MOBILE_FORMATS", "RUNNER_RUNTIMES", "board_facts", "requirements_for"]


@dataclass(frozen=True)
class BoardFacts:
    """Software a board class ships with, as far as packaging depends on it."""

    jetpack: str | None = None
    tensorrt: str | None = None
    # The newest ONNX opset every TensorRT of this JetPack line parses: TensorRT 8.5 (JetPack 5.1) and 8.6
    # (JetPack 6.0) stop at opset 17; TensorRT 10.0-10.8 (JetPack 6.1 / 6.2 ship 10.3) parse opsets 9-20.
    max_onnx_opset: int | None = None
    python_note: str = ""


_JETPACK6 = BoardFacts(jetpack="6.x (6.0: TensorRT 8.6.2; 6.1 and 6.2: TensorRT 10.3)", tensorrt="8.6 / 10.3",
                       max_onnx_opset=17,
                       python_note="TensorRT's Python module comes with JetPack (apt: python3-libnvinfer); "
                                   "create the venv with --system-site-packages so it is visible")

BOARD_FACTS: dict[str, BoardFacts] = {
    "jetson-orin-nano": _JETPACK6,
    "jetson-orin-nx": _JETPACK6,
    "jetson-agx-orin": _JETPACK6,
}


def board_facts(profile_name: str) -> BoardFacts:
    return BOARD_FACTS.get(profile_name, BoardFacts())


# Formats run.py runs, and with which runtime; a TensorRT bundle runs its engine, else its ONNX on the CPU.
RUNNER_RUNTIMES: dict[Format, str] = {
    Format.ONNX: "onnxruntime",
    Format.ORT: "onnxruntime",
    Format.OPENVINO: "openvino",
    Format.TENSORRT: "tensorrt",
}
# Formats that ship to phones: the bundle carries an Android note instead of run.py.
MOBILE_FORMATS = (Format.EXECUTORCH, Format.ORT)

_PIP = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}


def requirements_for(runtimes: list[str], versions: dict[str, str], *, mobile: bool = False) -> list[str]:
    """requirements.txt lines: each runtime at least the version the bundle was checked with, numpy, pillow.

    TensorRT is not on PyPI for Jetson (JetPack installs it); its CUDA buffers come from cuda-python. A phone
    bundle's runtime is an Android library (ANDROID.md names it): nothing of it comes from pip.
    """
    if mobile:
        return ["# a phone bundle: its runtime is the Android library named in ANDROID.md, not a pip package;",
                "# numpy and pillow read the reference data (reference/*.npy, *.png) on a computer",
                "numpy>=1.24", "pillow>=9"]
    lines = []
    for rt in dict.fromkeys(runtimes):
        if rt == "tensorrt":
            lines += ["# tensorrt: installed by JetPack (python3-libnvinfer), not from PyPI", "cuda-python>=12"]
        elif rt in _PIP:
            v = versions.get(_PIP[rt])
            lines.append(f"{_PIP[rt]}>={_major_minor(v)}" if v else _PIP[rt])
    lines += ["numpy>=1.24", "pillow>=9"]
    return lines


def _major_minor(version: str) -> str:
    parts = version.split("-")[0].split(".")
    return ".".join(parts[:2])
