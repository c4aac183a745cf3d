"""Where a command measures: the device profile, the runtime threads and, with ``--host``, the board over SSH.

``edgetl profile`` and ``edgetl prune --target-latency-ms`` read the same options the same way; this module is
that one way, plus the two SSH helpers both use to run ``edgetl ... --json`` on a board and read its answer.

Example::

    where = resolve_device("jetson-orin-nano", threads=None, host="me@board", ssh_options={"port": 2222})
    where.profile.name, where.threads, where.ssh.host      # "jetson-orin-nano", 6, "me@board"
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["ConnectTimeoutOpt", "DeviceTarget", "PortOpt", "RemoteEdgetlOpt", "SshConfigOpt", "check_threads",
           "json_line", "resolve_device", "ssh_options", "ssh_run"]

SshConfigOpt = Annotated[Optional[Path], typer.Option("--ssh-config", help="SSH config file.")]
PortOpt = Annotated[Optional[int], typer.Option(help="SSH port.")]
RemoteEdgetlOpt = Annotated[Optional[str], typer.Option("--remote-edgetl", help="Command that runs edgetl on "
                                                        "the board.")]
ConnectTimeoutOpt = Annotated[Optional[int], typer.Option("--connect-timeout", help="SSH connect timeout, s.")]


@dataclass(frozen=True)
class DeviceTarget:
    """The device profile, the threads to run with (the option, else the profile's) and the board, if any."""

    profile: Any  # benchmarks.profiles.DeviceProfile
    threads: int | None
    ssh: Any = None  # benchmarks.remote.SshTarget when --host was given


def check_threads(threads: int | None) -> None:
    from edgetl.errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")


def ssh_options(*, ssh_config: Path | str | None = None, port: int | None = None, remote_edgetl: str | None = None,
                connect_timeout: int | None = None) -> dict[str, Any]:
    """The SSH flags as :meth:`SshTarget.from_profile` overrides (None: the profile's, else the SSH config's)."""
    return {"ssh_config": str(ssh_config) if ssh_config else None, "port": port, "remote_edgetl": remote_edgetl,
            "connect_timeout_s": connect_timeout}


def resolve_device(device: str, *, threads: int | None, host: str | None = None,
                   ssh_options: dict[str, Any] | None = None) -> DeviceTarget:
    """``--device``, ``--threads`` and ``--host`` (with the SSH overrides) checked and resolved, before any work.

    An unknown profile suggests the nearest; threads below 1 are refused; nothing connects yet.
    """
    from benchmarks.profiles import load_profile

    check_threads(threads)
    profile = load_profile(device)
    ssh = None
    if host:
        from benchmarks.remote import SshTarget

        ssh = SshTarget.from_profile(host, profile, **(ssh_options or {}))
    return DeviceTarget(profile=profile, threads=threads if threads is not None else profile.threads, ssh=ssh)


def ssh_run(argv: list[str], target, *, during: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an ``ssh``/``scp`` argv for ``target``; a connection failure is one :class:`RemoteError` line."""
    from edgetl.errors import RemoteError

    try:
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except FileNotFoundError:
        raise RemoteError(f"`{argv[0]}` is not installed here; install the OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{during} on {target.host} took longer than {timeout:.0f} s") from None
    if r.returncode == 255 or (argv[0] == "scp" and r.returncode != 0):
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RemoteError(f"{during} on {target.host} failed: {last}; check the host, its key "
                          f"(ssh {target.host} once) and that sshd runs there")
    return r


def json_line(stdout: str) -> dict[str, Any] | None:
    """The last JSON object line of a ``--json`` command's stdout (None: there is none, or it is unreadable)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None
