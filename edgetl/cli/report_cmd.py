"""``edgetl report``: Markdown + self-contained HTML (with plots) from the results database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    db: Annotated[Optional[Path], typer.Option("--db", help="Results database (default: $EDGETL_RESULTS_DB or ~/.cache/edgetl/results.db).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for report.md, report.html and the PNGs.")] = Path("edgetl-report"),
    device: Annotated[Optional[str], typer.Option("--device", "-D", help="Only this device profile's results.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Only one bench run (its run id).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every result, not only the newest per artifact/runtime/device.")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also export the results as CSV here.")] = None,
    export_json: Annotated[Optional[Path], typer.Option("--export-json", help="Also export the full results as JSON here.")] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a latency report (table, latency plot, accuracy-vs-latency Pareto plot) from stored results."""

    def body():
        from benchmarks.report import write_report
        from benchmarks.store import ResultsStore
        from edgetl.errors import InputFileError
        from edgetl.fileio import check_output

        if db is not None and not Path(db).exists():
            raise InputFileError(f"results database not found: {db}")
        check_output(output, kind="dir")
        for extra, flag in ((csv, "--csv"), (export_json, "--export-json")):
            if extra is not None:
                check_output(extra, what=flag)
        store = ResultsStore(db)
        rows = store.query(device=device, run_id=run, latest=not all_)
        files = write_report([r for _, _, r in rows], output, command=None)
        if csv:
            files["csv"] = str(store.export_csv(csv, device=device, run_id=run))
        if export_json:
            files["json"] = str(store.export_json(export_json, device=device, run_id=run))
        result = {"db": str(store.path), **files}

        def render(console):
            from benchmarks.report import markdown_table

            console.print(markdown_table([r for _, _, r in rows]), markup=False, highlight=False)
            console.print(f"wrote {files['html']} and {files['markdown']}"
                          + ("" if files["pareto"] else " (no accuracy known: no Pareto plot; bench with --eval-data)"))

        return result, render

    execute(body, json_=json_, debug=debug)
