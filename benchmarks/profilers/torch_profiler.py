"""PyTorch (eager ``.pt``): ``torch.profiler`` with one ``record_function`` per module (forward hooks); each module
is charged its own range less its child modules' ranges; the total is the whole forward's range.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from benchmarks.profilers.base import Profiled, per_run_ops, time_interleaved
from edgetl.artifact import Artifact
from edgetl.errors import ModelError

__all__ = ["profile"]

def profile(artifact: Artifact, x, threads, calls, rounds, warmup, mapper) -> Profiled:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if artifact.model is None:
        raise ModelError(f"{artifact.name}: no PyTorch module in memory to profile")
    model = artifact.model.eval()
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    t = torch.from_numpy(x)
    prefix = "edgetl.module::"
    stack: list[Any] = []
    active = {"on": True}  # plain calls run with the hooks idle (removing them per call would cost more)

    def pre(mod, inp, _n=""):
        if active["on"]:
            rf = record_function(prefix + _n)
            rf.__enter__()
            stack.append(rf)

    def post(mod, inp, out):
        if active["on"]:
            stack.pop().__exit__(None, None, None)
    handles = []
    for name, m in model.named_modules():  # the root too: its own time is the Python and ops between modules
        handles.append(m.register_forward_pre_hook(lambda mod, inp, _n=name: pre(mod, inp, _n)))
        handles.append(m.register_forward_hook(post))
    events: list[Any] = []

    def plain():
        active["on"] = False
        with torch.inference_mode():
            model(t)
        active["on"] = True

    def profiled():
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as p:
            with record_function("edgetl.forward"):
                model(t)
        events.append(p.events())
    try:
        for _ in range(warmup):
            profiled()
        events.clear()
        p_plain, p_prof = time_interleaved(plain, profiled, calls=calls, rounds=rounds, warmup=0)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    per_run, totals, kinds = [], [], {}
    for evs in events:
        run: dict[str, float] = {}
        child: dict[int, float] = defaultdict(float)
        mods = []
        for e in evs:
            if e.name == "edgetl.forward":
                totals.append(e.cpu_time_total / 1000.0)
                continue
            if e.name.startswith(prefix):
                mods.append(e)
                owner = _module_ancestor(e, prefix)
                if owner is not None:
                    child[id(owner)] += e.cpu_time_total
        for e in mods:  # a module's own time: its range less its child modules' ranges
            name = e.name[len(prefix):] or "(model body)"
            kinds[name] = type(modules.get(e.name[len(prefix):], model)).__name__
            run[name] = run.get(name, 0.0) + max(0.0, e.cpu_time_total - child[id(e)]) / 1000.0
        per_run.append(run)
    ops, total = per_run_ops(per_run, totals, kinds,
                              lambda k: None if k == "(model body)" else mapper._known(k))
    return ops, total, p_plain, p_prof, torch.__version__


def _module_ancestor(event, prefix: str):
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith(prefix):
        parent = parent.cpu_parent
    return parent
