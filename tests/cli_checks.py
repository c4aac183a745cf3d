"""What the contract and own-architecture CLI tests share: an ONNX export with named inputs and outputs, and
the two outcomes every command test checks (one JSON object on success; one stderr line and exit 2 on refusal)."""

from __future__ import annotations

import json
import warnings


def onnx_of(model, example, path, *, inputs, outputs, dynamic=None):
    """``model`` exported to ONNX (opset 17, TorchScript exporter) with these input/output names and axes."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), example, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17)
    return path


def ok_json(r):
    """The command succeeded; its stdout is the one JSON object."""
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def refused(r, *words, code=2):
    """The command was refused in one stderr line with exit ``code``, naming each of ``words``; returns the line."""
    assert r.returncode == code, r.stdout + r.stderr
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1, msg
    for w in words:
        assert w in msg, msg
    return msg
