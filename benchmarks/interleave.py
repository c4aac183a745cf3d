"""Several artifacts measured in interleaved rounds (A B C A B C ...), so their ratios hold on a busy machine.

Measuring A for two seconds and then B for two seconds compares A's machine with B's machine: a build or a
browser starting in between moves one and not the other. Here every artifact is loaded and warmed up first,
then each round times a block of calls of every artifact in turn. Per artifact the result pools the calls of
its blocks (median, p90, ...); the speed-up of an artifact over the baseline is the median over rounds of the
per-round ratio of their medians, with the rounds' spread (``(max - min) / median``).

Each block records this process's CPU time against wall time and the CPU other processes used
(:mod:`benchmarks.contention`). Contended blocks are re-measured: up to ``max_extra_rounds`` more rounds run
while any artifact has fewer than ``rounds`` clean blocks. A row whose figures still include contended blocks is
marked ``contended``; a speed-up from contended rounds, or whose rounds disagree by more than ``max_spread``, is
``reliable: False`` and reports say so instead of headlining it.

Each result also names what a later run needs to compare against it: the sha256 of the bytes measured
(``artifact_meta["sha256"]``), the id of these rounds (``config["interleaved_run"]``, shared by every artifact
measured together) and each round's fastest call and 5th percentile (``rounds[i]["min_ms"]``, ``"p5_ms"``), the
lower tail :mod:`benchmarks.ranking` ranks by when every round was contended.

Example::

    run = measure_interleaved([Candidate(a), Candidate(b)], BenchConfig(threads=2), profile=load_profile("x86-cpu"))
    run.results[1].speedup     # {"baseline": "a.onnx", "ratio": 1.8, "spread": 0.06, "reliable": True, ...}
"""

from __future__ import annotations

import datetime as _dt
import math
import secrets
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.contention import BlockLoad, ContentionRule
from benchmarks.identity import content_sha256
from benchmarks.machine import environment
from benchmarks.schema import BenchConfig, BenchResult, result_fields
from benchmarks.stats import LatencyStats, percentile
from benchmarks.timing import TimedBlock, WarmRunner, open_warm, plan_run, time_block
from edgetl.artifact import Artifact
from edgetl.errors import ConfigError
from edgetl.progress import task

__all__ = ["Candidate", "InterleaveConfig", "InterleavedRun", "measure_interleaved", "speedup"]


@dataclass(frozen=True)
class Candidate:
    """One artifact to measure; ``reload`` loads it again inside the cold-start timing (PyTorch checkpoints)."""

    artifact: Artifact
    source_path: str | Path | None = None
    reload: Callable[[], Artifact] | None = None
    label: str | None = None


@dataclass(frozen=True)
class InterleaveConfig:
    """How many rounds, how much re-measuring, and when a ratio is too noisy to headline."""

    rounds: int = 5
    max_extra_rounds: int | None = None  # None: as many as ``rounds``
    max_spread: float = 0.25  # (max - min) / median of the per-round ratios
    block_warmup_calls: int = 2  # untimed calls at the start of each block: caches after the switch
    rule: ContentionRule = field(default_factory=ContentionRule)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.max_extra_rounds is not None and self.max_extra_rounds < 0:
            raise ConfigError(f"max_extra_rounds must not be negative, got {self.max_extra_rounds}")
        if not (self.max_spread > 0 and math.isfinite(self.max_spread)):
            raise ConfigError(f"max_spread must be a positive number, got {self.max_spread}")

    @property
    def extra_rounds(self) -> int:
        return self.rounds if self.max_extra_rounds is None else self.max_extra_rounds


@dataclass
class _Block:
    """One timed block of one artifact, judged for contention."""

    timed: TimedBlock
    contended: bool
    reasons: list[str]

    @property
    def samples_ns(self) -> list[int]:
        return self.timed.samples_ns

    @property
    def load(self) -> BlockLoad:
        return self.timed.load

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ns) / 1e6

    def tail_ms(self) -> dict[str, float]:
        """The block's fastest call and its 5th percentile: contention only adds time, so the lower tail is the
        estimate of the uncontended cost (Chen & Revels 2016, arXiv:1608.04295); see :mod:`benchmarks.ranking`."""
        xs = sorted(self.samples_ns)
        return {"min_ms": round(xs[0] / 1e6, 6), "p5_ms": round(percentile(xs, 5) / 1e6, 6)}


@dataclass
class _Lane:
    """One loaded, warmed-up artifact and its blocks."""

    candidate: Candidate
    warm: WarmRunner
    peak_delta_mb: float | None
    blocks: list[_Block] = field(default_factory=list)

    @property
    def artifact(self) -> Artifact:
        return self.warm.artifact

    @property
    def name(self) -> str:
        c = self.candidate
        if c.label:
            return c.label
        if c.source_path and self.artifact.path is None:
            return Path(c.source_path).name
        return self.artifact.name


@dataclass
class InterleavedRun:
    results: list[BenchResult]
    rounds: int  # rounds run, extra rounds included
    extra_rounds: int
    baseline: int


def _open(c: Candidate, config: BenchConfig, profile) -> _Lane:
    warm = open_warm(c.artifact, plan_run(c.artifact, config, profile), config, reload=c.reload)
    return _Lane(candidate=c, warm=warm, peak_delta_mb=warm.peak_rss_delta_mb())


def _time_block(lane: _Lane, *, count: int, min_ns: int, max_ns: int, warmup: int, rule: ContentionRule,
                cpu_rule: bool) -> _Block:
    timed = time_block(lane.warm, count=count, min_ns=min_ns, max_ns=max_ns, warmup=warmup)
    judge = rule if cpu_rule else ContentionRule(others_cores=rule.others_cores, min_cpu_share=0.0,
                                                 min_block_s=rule.min_block_s)
    reasons = judge.reasons(timed.load)
    return _Block(timed=timed, contended=bool(reasons), reasons=reasons)


def _used(lane: _Lane, need: int) -> list[int]:
    """Indices of the blocks a lane's figures come from: its clean blocks if there are enough, else all."""
    clean = [i for i, b in enumerate(lane.blocks) if not b.contended]
    return clean if len(clean) >= need else list(range(len(lane.blocks)))


def speedup(base_p50: Sequence[float], p50: Sequence[float], *, max_spread: float,
            contended: bool = False) -> dict[str, Any]:
    """Median over rounds of ``base / artifact`` (above 1: faster than the baseline), with the rounds' spread."""
    ratios = [b / a for b, a in zip(base_p50, p50, strict=True) if a > 0]
    if not ratios:
        raise ConfigError("no rounds to compare")
    med = statistics.median(ratios)
    spread = (max(ratios) - min(ratios)) / med if med > 0 else math.inf
    why = []
    if contended:
        why.append("measured under contention")
    if len(ratios) < 3:
        why.append(f"only {len(ratios)} round(s)")
    if spread > max_spread:
        why.append(f"rounds disagree by {100 * spread:.0f} % (more than {100 * max_spread:.0f} %)")
    return {"ratio": med, "rounds": len(ratios), "per_round": [round(r, 4) for r in ratios],
            "spread": round(spread, 4), "reliable": not why, "unreliable_because": "; ".join(why) or None}


def measure_interleaved(candidates: Sequence[Candidate], config: BenchConfig | None = None, *, profile=None,
                        baseline: int = 0, interleave: InterleaveConfig | None = None) -> InterleavedRun:
    """Measure every candidate in interleaved rounds; see the module docstring."""
    config, il = config or BenchConfig(), interleave or InterleaveConfig()
    if not candidates:
        raise ConfigError("give at least one artifact to measure")
    if not 0 <= baseline < len(candidates):
        raise ConfigError(f"baseline index {baseline} is outside the {len(candidates)} artifact(s)")
    lanes: list[_Lane] = []
    try:
        for c in candidates:
            lanes.append(_open(c, config, profile))
        count = max(1, math.ceil(config.min_count / il.rounds))
        min_ns = int(config.min_time_s * 1e9 / il.rounds)
        max_ns = max(min_ns, int(config.max_time_s * 1e9 / il.rounds))
        cpu_rule = config.device == "cpu"
        done = extra = 0
        with task(f"bench {len(lanes)} artifact(s) in interleaved rounds", total=il.rounds) as bar:
            while True:
                for lane in lanes:
                    lane.blocks.append(_time_block(lane, count=count, min_ns=min_ns, max_ns=max_ns,
                                                   warmup=il.block_warmup_calls, rule=il.rule, cpu_rule=cpu_rule))
                done += 1
                if done <= il.rounds:
                    bar.advance(1, round=done, contended=sum(ln.blocks[-1].contended for ln in lanes))
                if done < il.rounds:
                    continue
                short = any(sum(not b.contended for b in ln.blocks) < il.rounds for ln in lanes)
                if not short or extra >= il.extra_rounds:
                    break
                extra += 1
        infos = [ln.warm.runner.describe() for ln in lanes]
    finally:
        for ln in lanes:
            ln.warm.close()
    # one name for these rounds, stored with each result: a later run can find the artifacts measured together
    session = f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    results = [_result(ln, info, config, profile, il, session) for ln, info in zip(lanes, infos, strict=True)]
    _add_speedups(lanes, results, baseline, il)
    return InterleavedRun(results=results, rounds=done, extra_rounds=extra, baseline=baseline)


def _result(lane: _Lane, info: dict[str, Any], config: BenchConfig, profile, il: InterleaveConfig,
            session: str) -> BenchResult:
    used = _used(lane, il.rounds)
    blocks = [lane.blocks[i] for i in used]
    samples = [s for b in blocks for s in b.samples_ns]
    rt = [x for b in blocks for x in b.timed.runtime_ms]
    wall = sum(b.load.wall_s for b in blocks)
    contended = any(b.contended for b in blocks)
    n_contended = sum(b.contended for b in lane.blocks)
    others = [b.load.others_cores for b in lane.blocks if b.load.others_cores is not None]
    warnings = []
    if contended:
        warnings.append(f"timed under contention in {n_contended} of {len(lane.blocks)} rounds "
                        f"({_summary(b for b in blocks if b.contended)}), re-measured {len(lane.blocks) - il.rounds} "
                        "time(s) without a clean set: the latency is inflated; measure on an idle machine")
    elif n_contended:
        warnings.append(f"{n_contended} contended round(s) re-measured and left out")
    if len(samples) < config.min_count:
        warnings.append(f"only {len(samples)} calls (asked for {config.min_count})")
    if not lane.warm.finite:
        warnings.append("the model produced non-finite outputs on real inputs")
    env = environment(profile)
    env["background_load_cores"] = statistics.median(others) if others else None
    fields = result_fields(lane.warm, info, config, profile, name=lane.name, source_path=lane.candidate.source_path)
    fields["artifact_meta"]["sha256"] = content_sha256(fields["path"])  # identity of the bytes measured
    return BenchResult(
        **fields,
        latency_ms=LatencyStats.from_ns(samples), runtime_latency_ms=LatencyStats.from_samples(rt) if rt else None,
        throughput=config.batch * len(samples) / wall if wall > 0 else 0.0, peak_rss_delta_mb=lane.peak_delta_mb,
        config={**config.to_dict(), "interleaved_rounds": il.rounds, "max_spread": il.max_spread,
                "interleaved_run": session},
        env=env, warnings=warnings,
        contended=contended,
        contention={"rounds": len(lane.blocks), "contended_rounds": n_contended, "used_rounds": used,
                    "others_cores_max": max(others) if others else None,
                    "rule": {"others_cores": il.rule.others_cores, "min_cpu_share": il.rule.min_cpu_share}},
        rounds=[{"round": i, "p50_ms": round(b.p50_ms, 6), **b.tail_ms(), "count": len(b.samples_ns),
                 "contended": b.contended, "reasons": b.reasons, **b.load.to_dict()} for i, b in enumerate(lane.blocks)],
    )


def _summary(blocks) -> str:
    blocks = list(blocks)
    others = [b.load.others_cores for b in blocks if b.load.others_cores is not None]
    parts = [f"other processes used up to {max(others):.2f} cores"] if others else []
    share = min(b.load.cpu_per_wall for b in blocks)
    if any("on a CPU" in r for b in blocks for r in b.reasons):
        parts.append(f"this process was on a CPU as little as {100 * share:.0f} % of the time")
    return "; ".join(parts)


def _add_speedups(lanes: list[_Lane], results: list[BenchResult], baseline: int, il: InterleaveConfig) -> None:
    base = lanes[baseline]
    for k, (lane, res) in enumerate(zip(lanes, results, strict=True)):
        if k == baseline:
            continue
        pairs = [i for i in range(len(lane.blocks)) if not (lane.blocks[i].contended or base.blocks[i].contended)]
        contended = len(pairs) < il.rounds
        if contended:
            pairs = list(range(len(lane.blocks)))
        sp = speedup([base.blocks[i].p50_ms for i in pairs], [lane.blocks[i].p50_ms for i in pairs],
                     max_spread=il.max_spread, contended=contended)
        res.speedup = {"baseline": results[baseline].artifact, "statistic": "median of per-round p50 ratios", **sp}
