"""``edgetl plugins``: every registered criterion, exporter, runtime and quantizer, and where it came from.

Example::

    edgetl plugins --json
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins_cmd)


def plugins_cmd(
    kind: Annotated[Optional[str], typer.Option("--kind", help="Only this kind: criterion, exporter, runtime or "
                                                "quantizer.")] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the extension points' pieces: built-ins and those other packages add through entry points."""

    def body():
        from edgetl.errors import UnknownNameError
        from edgetl.registry import GROUPS, registries

        regs = registries()
        if kind is not None and kind.strip().lower() not in regs:
            raise UnknownNameError("plug-in kind", kind, regs)
        chosen = {k: r for k, r in regs.items() if kind is None or k == kind.strip().lower()}
        rows = [e.to_dict() for r in chosen.values() for e in r.entries().values()]
        result = {"groups": {k: GROUPS[k] for k in chosen}, "plugins": rows}

        def render(console):
            table(console, "registered pieces", ["kind", "name", "from", "target"],
                  [[r["kind"], r["name"] + (" (shadowed)" if r["shadowed"] else ""), r["origin"], r["target"]]
                   for r in rows])
            console.print("entry point groups: " + ", ".join(result["groups"].values()))

        return result, render

    execute(body, json_=json_, debug=debug)
