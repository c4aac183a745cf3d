"""``edgetl distill`` on any model: the student matches the teacher's outputs on unlabelled inputs.

``@contract_distill`` gives the command the contract flags (``--input``, ``--opt-shape``, ``--outputs``, ``--role``,
``--task``). When one is given, or the teacher is not a labelled one-input classifier, ``--data`` is read against
the teacher's contract (an image folder with or without classes, an ``.npz`` named after the inputs, or
``module:function``) and the student (a model file, e.g. the pruned teacher) learns every output the contract
names, without labels (:mod:`edgetl.distill.outputs`); the JSON reports the fidelity headline against the teacher
before and after on held-out samples.

Example::

    edgetl distill -t seg.pt -s seg_small.pt --data tiles/ --task segmentation -e 5 -o seg_recovered.pt --json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetl.cli.prune_contract import contract_command, contract_of, flags_of

__all__ = ["contract_distill"]


def contract_distill(fn: Callable) -> Callable:
    """Give the distill command the contract flags and its label-free path (module doc)."""
    return contract_command(_run, model_key="teacher")(fn)


def _check(kwargs: dict[str, Any]) -> Path:
    from edgetl.errors import ConfigError
    from edgetl.fileio import check_output

    output: Path = kwargs["output"]
    if output.exists() and not kwargs.get("overwrite"):
        raise ConfigError(f"{output} exists; pass --overwrite to replace it")
    check_output(output)
    if len(kwargs["teacher"]) != 1:
        raise ConfigError(f"label-free distillation learns from one teacher; {len(kwargs['teacher'])} were given")
    if kwargs.get("resume") or kwargs.get("align_classes"):
        raise ConfigError("--resume and --align-classes are for classifiers trained on labels; leave them out")
    if not Path(kwargs["student"]).exists():
        raise ConfigError(f"--student {kwargs['student']}: distilling on unlabelled inputs trains a model file you "
                          "give (e.g. the pruned teacher); a zoo student is built for classes")
    return output


def _run(said: dict[str, Any], *, options: dict, json_: bool = False, debug: bool = False, **kwargs: Any) -> None:
    from edgetl.cli._common import execute

    def body():
        import torch

        from edgetl.distill import distill
        from edgetl.inputs import load_inputs
        from edgetl.models import load_model, save_model
        from edgetl.stages import StageContext, stage_kind

        torch.set_flush_denormal(True)
        output = _check(kwargs)
        cfg = stage_kind("distill").config_class()(**options)
        flags = flags_of(said)
        teacher = load_model(kwargs["teacher"][0])
        teacher.contract = contract_of(teacher, flags, kwargs["data"])
        student = load_model(kwargs["student"])
        student.contract = teacher.contract
        inputs = load_inputs(kwargs["data"], contract=teacher.contract)
        art = distill(student, cfg, data=inputs, ctx=StageContext(teachers=(teacher,)))
        save_model(art, output)
        rec = art.history[-1]
        result = {"output": str(output), "student": kwargs["student"], "teachers": list(kwargs["teacher"]),
                  "arch": art.arch, "data": inputs.origin, "samples": len(inputs), "seconds": rec.seconds,
                  **rec.metrics}

        def render(console) -> None:
            from edgetl.cli._common import table

            m = rec.metrics
            b, a = m["headline_before"], m["headline_after"]
            table(console, f"distilled without labels (task {m['task']})", ["", "before", "after"], [
                [f"{b['metric']} against the teacher ({b['output']})", _num(b["value"]), _num(a["value"])],
                ["held-out loss", _num(m["held_out_loss_before"]), _num(m["held_out_loss_after"])],
            ])
            console.print(f"saved {output} (best epoch {m['best_epoch']} of {m['epochs_run']}, {rec.seconds:.1f} s)")

        return result, render

    execute(body, json_=json_, debug=debug)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"
