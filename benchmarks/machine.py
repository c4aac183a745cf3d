"""What the numbers depend on (CPU, cores, memory, OS, library versions, power mode) and this process's memory.

Example::

    env = environment(load_profile("x86-cpu"))
    env["cpu"], env["versions"]["onnxruntime"]
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["environment", "peak_mb", "reset_peak", "rss_mb"]

_VERSIONED = ("edgetl", "numpy", "torch", "onnxruntime", "openvino", "executorch", "ai-edge-litert", "tensorrt",
              "nncf", "onnx")


def _cpu_model() -> str:
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        # x86 says "model name"; ARM boards say "Hardware" / "Model" (x86's "model" is a number).
        for key in ("model name", "hardware", "cpu model", "model"):
            if fields.get(key) and not fields[key].isdigit():
                return fields[key]
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _board_model() -> str | None:
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            return Path(p).read_text().strip("\x00\n ")
        except OSError:
            continue
    return None


def _physical_cores() -> int | None:
    try:
        seen = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "physical id":
                phys = v.strip()
            elif k == "core id":
                core = v.strip()
            elif not line.strip() and core is not None:
                seen.add((phys, core))
                phys = core = None
        return len(seen) or None
    except OSError:
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in _VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _command_output(cmd: str, timeout: float = 5.0) -> str | None:
    exe = cmd.split()[0]
    if not shutil.which(exe) and not Path(exe).exists():
        return None
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)  # noqa: S602 - profile text
    except (OSError, subprocess.SubprocessError):
        return None
    text = (r.stdout or r.stderr).strip()
    return text[:500] or None


def _power_mode(profile) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cmd = getattr(profile, "power_mode_cmd", None)
    if cmd:
        out["power_mode"] = _command_output(cmd)
    elif shutil.which("nvpmodel"):
        out["power_mode"] = _command_output("nvpmodel -q")
    try:
        out["cpu_governor"] = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    return out


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def environment(profile=None) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, memory, OS, library versions, power mode, device profile."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    env = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "board": _board_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "physical_cores": _physical_cores(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
        "profile": getattr(profile, "name", None),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        **_power_mode(profile),
    }
    return {k: v for k, v in env.items() if v is not None}


# --------------------------------------------------------------------------- this process's memory
def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (MB), where /proc says."""
    return _status_mb("VmRSS:")


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> float | None:
    """This process's RSS high-water mark (MB): /proc's VmHWM, else getrusage's maximum."""
    peak = _status_mb("VmHWM:")
    if peak is not None:
        return peak
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 1024 / (1024 if platform.system() == "Darwin" else 1)
    except (ImportError, OSError):
        return None
