"""Every benchmark result, appended to one SQLite file; exportable as JSON or CSV.

The database is ``$EDGETL_RESULTS_DB`` if set, else ``~/.cache/edgetl/results.db``; ``--db`` overrides both.
Each row keeps the full result as JSON next to a few indexed columns, so new result fields need no migration.
Writes are serialised by a lock and one short transaction each, so parallel hosts can append safely.

Example::

    store = ResultsStore()
    store.add(result)
    store.export_csv("results.csv")
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchResult
from edgetl.errors import InputFileError
from edgetl.fileio import atomic_path

__all__ = ["CSV_COLUMNS", "ResultsStore", "default_db_path", "record_run"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    run_id TEXT,
    device TEXT NOT NULL,
    host TEXT NOT NULL,
    artifact TEXT NOT NULL,
    format TEXT NOT NULL,
    runtime TEXT NOT NULL,
    precision TEXT NOT NULL,
    batch INTEGER NOT NULL,
    threads INTEGER,
    p50_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    count INTEGER NOT NULL,
    accuracy REAL,
    result_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_device ON results(device, artifact);
"""
# Columns added after the first schema: added in place to older databases (values NULL for old rows).
_ADDED_COLUMNS = (("arch", "TEXT"), ("emulated", "TEXT"), ("contended", "INTEGER"))

CSV_COLUMNS = ("id", "created", "run_id", "device", "host", "artifact", "format", "runtime", "precision", "batch",
               "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "count",
               "throughput", "cold_start_ms", "peak_rss_delta_mb", "model_size_bytes", "accuracy", "tool", "inputs",
               "cpu", "arch", "emulated", "contended")


def default_db_path() -> Path:
    env = os.environ.get("EDGETL_RESULTS_DB")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgetl" / "results.db"


class ResultsStore:
    """An append-only SQLite store of :class:`BenchResult`."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.executescript(_SCHEMA)
                have = {row[1] for row in db.execute("PRAGMA table_info(results)")}
                for col, kind in _ADDED_COLUMNS:
                    if col not in have:
                        db.execute(f"ALTER TABLE results ADD COLUMN {col} {kind}")
        except (OSError, sqlite3.DatabaseError) as e:
            raise InputFileError(f"{self.path}: cannot open the results database ({e}); pass another --db or set "
                                 "EDGETL_RESULTS_DB") from None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(str(self.path), timeout=30)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def add(self, result: BenchResult, *, run_id: str | None = None) -> int:
        """Append ``result``; returns its row id."""
        s = result.latency_ms
        row = (result.created, run_id, result.device, result.host, result.artifact, result.format, result.runtime,
               result.precision, result.batch, result.threads, s.p50, s.p90, s.p99, s.count, result.accuracy,
               json.dumps(result.to_dict(), default=str), result.arch, result.emulated, int(bool(result.contended)))
        with self._lock, self._connect() as db:
            cur = db.execute(
                "INSERT INTO results (created, run_id, device, host, artifact, format, runtime, precision, batch, "
                "threads, p50_ms, p90_ms, p99_ms, count, accuracy, result_json, arch, emulated, contended) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid)

    def query(self, *, device: str | None = None, artifact: str | None = None, run_id: str | None = None,
              latest: bool = False) -> list[tuple[int, str | None, BenchResult]]:
        """``(id, run_id, result)`` rows, oldest first; ``latest`` keeps the newest per (device, host, artifact,
        runtime, precision, batch, threads)."""
        sql, args = "SELECT id, run_id, result_json FROM results WHERE 1=1", []
        for col, val in (("device", device), ("artifact", artifact), ("run_id", run_id)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val)
        with self._lock, self._connect() as db:
            rows = db.execute(sql + " ORDER BY id", args).fetchall()
        out = [(int(i), r, BenchResult.from_dict(json.loads(js))) for i, r, js in rows]
        if latest:
            newest: dict[tuple, tuple[int, str | None, BenchResult]] = {}
            for item in out:
                res = item[2]
                newest[(res.device, res.host, res.emulated, res.path or res.artifact, res.runtime, res.precision,
                        res.batch, res.threads)] = item
            out = sorted(newest.values(), key=lambda t: t[0])
        return out

    def clean_records(self, result: BenchResult, *, limit: int = 10) -> list[dict[str, Any]]:
        """Earlier uncontended measurements of the same bytes (``artifact_meta["sha256"]``) on the same device,
        host and machine, by the same runtime, precision, batch and threads: newest first, one per interleaved
        run, at most ``limit``. A record without a hash, of other content (a rebuilt file at the same path), from
        another host or device, emulated, or contended is not one. Empty when ``result`` has no hash."""
        want = _identity(result)
        if want is None:
            return []
        seen: dict[str, dict[str, Any]] = {}
        for sid, run_id, r in reversed(self.query(device=result.device)):
            session = r.config.get("interleaved_run")
            if r.contended or r.emulated or not session or session in seen or _identity(r) != want:
                continue
            seen[session] = {"store_id": sid, "run_id": run_id, "interleaved_run": session, "created": r.created,
                             "p50_ms": r.latency_ms.p50, "p90_ms": r.latency_ms.p90, "count": r.latency_ms.count}
            if len(seen) >= limit:
                break
        return list(seen.values())

    def results(self, **kw: Any) -> list[BenchResult]:
        return [r for _, _, r in self.query(**kw)]

    def __len__(self) -> int:
        with self._lock, self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def export_json(self, path: str | os.PathLike[str], **kw: Any) -> Path:
        """All (or the filtered) results as a JSON list of full result objects (atomic write)."""
        rows = [{"id": i, "run_id": rid, **r.to_dict()} for i, rid, r in self.query(**kw)]
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")
        return Path(path)

    def export_csv(self, path: str | os.PathLike[str], **kw: Any) -> Path:
        """One flat row per result with :data:`CSV_COLUMNS` (atomic write)."""
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for i, rid, r in self.query(**kw):
                s = r.latency_ms
                w.writerow([i, r.created, rid, r.device, r.host, r.artifact, r.format, r.runtime, r.precision,
                            r.batch, r.threads, s.p50, s.p90, s.p99, s.mean, s.std, s.min, s.max, s.count,
                            r.throughput, r.cold_start_ms, r.peak_rss_delta_mb, r.model_size_bytes, r.accuracy,
                            r.tool, r.inputs, r.env.get("cpu"), r.arch, r.emulated or "", int(bool(r.contended))])
        return Path(path)


def _identity(r: BenchResult) -> tuple | None:
    """What makes two measurements comparable: the same bytes, measured the same way on the same machine."""
    digest = (r.artifact_meta or {}).get("sha256")
    if not digest:
        return None
    return (digest, r.device, r.host, r.env.get("hostname"), r.arch, r.runtime, r.precision, r.batch, r.threads)


def record_run(results, *, run_id: str, db: str | os.PathLike[str] | None = None) -> list[int]:
    """Append the measurements of one ``edgetl run`` (``BenchResult``s or their dicts) under ``run_id``, so
    ``edgetl report`` shows them; returns the row ids."""
    store = ResultsStore(db)
    return [store.add(r if isinstance(r, BenchResult) else BenchResult.from_dict(r), run_id=run_id) for r in results]
