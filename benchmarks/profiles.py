"""Device profiles: what to try on a board (formats, runtimes, precisions, threads) and how to reach it.

Built-in profiles live in ``benchmarks/devices/*.yaml``. Users add their own as a YAML file given by path
(``--device ./my-board.yaml``) or dropped in a user directory (``$EDGETL_DEVICES_DIR`` or
``~/.config/edgetl/devices/``); a user profile with a built-in's name replaces it. Every key is checked:
a wrong one fails with the nearest valid key.

Example::

    p = load_profile("jetson-orin-nano")
    p.runtimes          # ('tensorrt', 'trtexec', 'onnxruntime', 'torch')
    p.connection.port   # 22
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.artifact import Format
from edgetl.choice import Choice
from edgetl.errors import ConfigError, InputFileError, UnknownNameError, check_names
from edgetl.formats import Precision

__all__ = ["BUILTIN_DIR", "Accelerator", "BenchDefaults", "Connection", "DeviceProfile", "Method", "Precision",
           "RUNTIMES", "check_local", "known_runtimes", "list_profiles", "load_profile", "local_arch", "parse_profile", "user_dirs"]

BUILTIN_DIR = Path(__file__).with_name("devices")
# Built-in runtimes a profile may name: the in-process runtimes plus trtexec (NVIDIA's own tool, used on boards
# that have TensorRT but no Python stack). Runtimes other packages register (``edgetl.runtimes`` entry points)
# may be named too: see :func:`known_runtimes`.
RUNTIMES = ("torch", "onnxruntime", "openvino", "executorch", "litert", "tensorrt", "trtexec")


def known_runtimes() -> list[str]:
    """Every runtime a profile may name: the built-ins above and the registered plug-in runtimes."""
    from edgetl.registry import runtimes

    return sorted({*RUNTIMES, *runtimes().names()})


class Method(Choice):
    """How the board is reached: this machine, or over SSH."""

    LOCAL = "local"
    SSH = "ssh"

    @classmethod
    def _kind(cls) -> str:
        return "connection method"


class Accelerator(Choice):
    """What a profile's device computes on."""

    CPU = "cpu"
    CUDA = "cuda"
    GPU = "gpu"
    NPU = "npu"


@dataclass(frozen=True)
class Connection:
    """How to reach the board. ``host`` may be an alias from the user's SSH config."""

    method: Method = Method.LOCAL
    host: str | None = None
    user: str | None = None
    port: int | None = None
    # The command that runs edgetl on the board (e.g. "/opt/venv/bin/edgetl" or "python3 -m edgetl.cli").
    remote_edgetl: str = "edgetl"
    trtexec: str = "trtexec"  # used when the board has TensorRT but no edgetl
    workdir: str = "/tmp/edgetl-bench"
    connect_timeout_s: int = 10
    server_alive_interval_s: int = 5
    server_alive_count_max: int = 3
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()  # extra "-o Key=Value" options, e.g. "IdentityFile=~/.ssh/jetson"


@dataclass(frozen=True)
class BenchDefaults:
    """Measurement settings a board needs (slow boards want longer runs)."""

    warmup_s: float = 0.5
    warmup_runs: int = 10
    min_time_s: float = 2.0
    min_count: int = 100
    max_time_s: float = 120.0


@dataclass(frozen=True)
class DeviceProfile:
    """One target device class."""

    name: str
    description: str = ""
    arch: str = "x86_64"
    accelerator: Accelerator = Accelerator.CPU
    threads: int | None = None  # None: every core the process may use
    formats: tuple[Format, ...] = (Format.TORCH, Format.ONNX, Format.ORT, Format.OPENVINO)
    runtimes: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.INT8)
    batch_sizes: tuple[int, ...] = (1,)
    power_mode_cmd: str | None = None  # a command whose output names the power mode, e.g. "nvpmodel -q"
    bench: BenchDefaults = field(default_factory=BenchDefaults)
    connection: Connection = field(default_factory=Connection)
    notes: str = ""
    source: str = "built-in"  # the file it came from

    def runtime_for(self, fmt: Format) -> str:
        """The first of this profile's in-process runtimes (built-in or plug-in) that runs ``fmt``."""
        from edgetl.registry import runtimes
        from edgetl.runtimes import runtime_formats

        if fmt not in self.formats:
            raise ConfigError(f"device profile {self.name!r} does not run {fmt.value} artifacts; it runs "
                              f"{', '.join(f.value for f in self.formats)}. Export to one of these, or pick "
                              "another --device (see `edgetl devices`)")
        registered = runtimes()
        for rt in self.runtimes:
            if rt in registered and fmt in runtime_formats(rt):
                return rt
        raise ConfigError(f"none of profile {self.name!r}'s runtimes ({', '.join(self.runtimes)}) runs "
                          f"{fmt.value} artifacts in edgetl")

    def to_dict(self) -> dict[str, Any]:
        def conv(v):
            if isinstance(v, enum.Enum):
                return v.value
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return conv(dataclasses.asdict(self))


# --------------------------------------------------------------------------- does it describe this machine?
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def local_arch() -> str:
    """This machine's architecture, normalised (``x86_64``, ``aarch64``, ...)."""
    import platform

    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def _has_cuda() -> bool:
    import shutil

    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl").exists() or shutil.which("nvidia-smi") is not None


def check_local(profile: DeviceProfile, *, emulate: bool = False) -> str | None:
    """Refuse to measure ``profile`` on this machine when it describes another one (arch or accelerator).

    Returns ``None`` when the profile matches, the label ``"emulated on <arch>"`` when it does not and
    ``emulate`` is set; otherwise raises :class:`ConfigError` saying to pass ``--host`` (or ``--emulate``).
    """
    here = local_arch()
    want = _ARCH_ALIASES.get(profile.arch.lower(), profile.arch.lower())
    problems = []
    if want != here:
        problems.append(f"its arch is {profile.arch}, this machine is {here}")
    if profile.accelerator is Accelerator.CUDA and not _has_cuda():
        problems.append("it has a CUDA GPU, this machine has none")
    elif profile.accelerator in (Accelerator.GPU, Accelerator.NPU):
        problems.append(f"it runs on its {profile.accelerator.value.upper()}, which edgetl cannot use here")
    if not problems:
        return None
    label = f"emulated on {here.replace('_', '-')}"
    if emulate:
        return label
    raise ConfigError(f"device profile {profile.name!r} describes another machine ({'; '.join(problems)}): "
                      "measure it there with --host user@board, or pass --emulate to time this machine with the "
                      f"profile's settings, labelled {label!r}")


# --------------------------------------------------------------------------- parsing
def _check_keys(d: dict, cls, where: str, path: str) -> None:
    check_names(d, [f.name for f in dataclasses.fields(cls) if f.name != "source"], f"key{where}", hint=f"(in {path})")


def _enum_tuple(values, enum_cls: type[Choice], what: str, path: str) -> tuple:
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values or ():
        try:
            out.append(enum_cls.parse(v))
        except UnknownNameError as e:
            raise UnknownNameError(what, str(v), e.valid, hint=f"(in {path})") from None
    return tuple(out)


def _typed(d: dict, cls, path: str, where: str) -> Any:
    """Build a flat dataclass from ``d``, checking each value against the field's annotated type."""
    _check_keys(d, cls, where, path)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, kind = d[f.name], str(f.type)
        bad = ConfigError(f"{path}: key {f.name!r}{where} must be {kind.replace(' | None', ' or null')}, got {v!r}")
        if v is None:
            if "None" not in kind:
                raise bad
        elif kind == "Method":
            v = _enum_tuple(v, Method, "connection method", path)[0]
        elif kind.startswith("tuple"):
            if not isinstance(v, (list, str)):
                raise bad
            v = tuple(str(x) for x in _as_list(v))
        elif kind.startswith(("int", "float")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (kind.startswith("int") and v != int(v)):
                raise bad
            v = int(v) if kind.startswith("int") else float(v)
        elif kind.startswith("str") and not isinstance(v, (str, int)):
            raise bad
        elif kind.startswith("str"):
            v = str(v)
        kw[f.name] = v
    return cls(**kw)


def parse_profile(data: Any, *, path: str = "<profile>", name: str | None = None) -> DeviceProfile:
    """Validate a profile mapping (as read from YAML) into a :class:`DeviceProfile`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a device profile is a YAML mapping of keys (name, formats, runtimes, ...)")
    _check_keys(data, DeviceProfile, "", path)
    d = dict(data)
    prof_name = str(d.pop("name", None) or name or Path(path).stem)
    kw: dict[str, Any] = {"name": prof_name, "source": path}
    for key in ("description", "arch", "notes", "power_mode_cmd"):
        if key in d and d[key] is not None:
            kw[key] = str(d[key])
    if "accelerator" in d:
        kw["accelerator"] = _enum_tuple(d["accelerator"], Accelerator, "accelerator", path)[0]
    if "threads" in d:
        t = d["threads"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise ConfigError(f"{path}: threads must be a positive integer or null (all cores), got {t!r}")
        kw["threads"] = t
    if "formats" in d:
        kw["formats"] = tuple(Format.parse(str(f)) if str(f).lower() in {x.value for x in Format}
                              else _unknown_format(str(f), path) for f in _as_list(d["formats"]))
    if "runtimes" in d:
        rts = tuple(str(r).lower() for r in _as_list(d["runtimes"]))
        known = known_runtimes() if any(r not in RUNTIMES for r in rts) else RUNTIMES
        for r in rts:
            if r not in known:
                raise UnknownNameError("runtime", r, known, hint=f"(in {path})")
        kw["runtimes"] = rts
    if "precisions" in d:
        kw["precisions"] = _enum_tuple(_as_list(d["precisions"]), Precision, "precision", path)
    if "batch_sizes" in d:
        bs = _as_list(d["batch_sizes"])
        if not bs or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bs):
            raise ConfigError(f"{path}: batch_sizes must be a list of positive integers, got {d['batch_sizes']!r}")
        kw["batch_sizes"] = tuple(bs)
    if "bench" in d:
        if not isinstance(d["bench"], dict):
            raise ConfigError(f"{path}: bench must be a mapping (warmup_s, min_time_s, min_count, ...)")
        kw["bench"] = _typed(d["bench"], BenchDefaults, path, " (under bench)")
    if "connection" in d:
        c = d["connection"]
        if not isinstance(c, dict):
            raise ConfigError(f"{path}: connection must be a mapping (method, host, port, remote_edgetl, ...)")
        kw["connection"] = _typed(c, Connection, path, " (under connection)")
    return DeviceProfile(**kw)


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _unknown_format(value: str, path: str):
    raise UnknownNameError("format", value, [f.value for f in Format], hint=f"(in {path})")


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputFileError(f"{path}: cannot read device profile ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def user_dirs() -> list[Path]:
    """Where user profiles are looked for: ``$EDGETL_DEVICES_DIR`` (os.pathsep-separated), then the config dir."""
    dirs = [Path(p).expanduser() for p in os.environ.get("EDGETL_DEVICES_DIR", "").split(os.pathsep) if p]
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [*dirs, base / "edgetl" / "devices"]


def _files() -> list[Path]:
    found: list[Path] = sorted(BUILTIN_DIR.glob("*.yaml"))
    for d in reversed(user_dirs()):  # later entries override: the first user dir wins
        if d.is_dir():
            found += sorted([*d.glob("*.yaml"), *d.glob("*.yml")])
    return found


def list_profiles() -> dict[str, DeviceProfile]:
    """Every profile by name: built-ins, replaced by user profiles of the same name."""
    out: dict[str, DeviceProfile] = {}
    for f in _files():
        src = "built-in" if f.parent == BUILTIN_DIR else str(f)
        p = parse_profile(_read_yaml(f), path=str(f), name=f.stem)
        out[p.name] = dataclasses.replace(p, source=src)
    return out


def load_profile(name_or_path: str | os.PathLike[str] | DeviceProfile) -> DeviceProfile:
    """A profile by name (built-in or user) or from a YAML file path."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    text = str(name_or_path)
    p = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        if not p.is_file():
            raise InputFileError(f"device profile file not found: {text}")
        return parse_profile(_read_yaml(p), path=str(p), name=p.stem)
    profiles = list_profiles()
    if text not in profiles:
        raise UnknownNameError("device profile", text, profiles,
                               hint="Or give a profile YAML file path, or add one to ~/.config/edgetl/devices/.")
    return profiles[text]
