"""``edgetl devices``: the device profiles edgetl knows (built-in and the user's own)."""

from __future__ import annotations

import typer

from edgetl.cli._common import DebugOpt, JsonOpt, execute, table


def register(app: typer.Typer) -> None:
    app.command("devices")(devices_cmd)


def devices_cmd(json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List device profiles: what each tries (formats, runtimes, precisions, threads) and how it is reached."""

    def body():
        from benchmarks.profiles import list_profiles, user_dirs

        profiles = list_profiles()
        result = {"profiles": [p.to_dict() for p in profiles.values()],
                  "user_dirs": [str(d) for d in user_dirs()]}

        def reach(p) -> str:
            c = p.connection
            if c.method.value == "local":
                return "local"
            return f"ssh {c.host or '--host'}" + (f":{c.port}" if c.port and c.port != 22 else "")

        def render(console):
            table(console, "device profiles", ["name", "arch", "accel", "threads", "runtimes", "formats",
                                               "precisions", "reach", "source"],
                  [[p.name, p.arch, p.accelerator.value, p.threads or "all", ", ".join(p.runtimes),
                    ", ".join(f.value for f in p.formats), ", ".join(x.value for x in p.precisions), reach(p),
                    p.source] for p in profiles.values()])
            console.print("Add your own: a YAML file passed as --device FILE.yaml, or placed in "
                          + " or ".join(result["user_dirs"]))

        return result, render

    execute(body, json_=json_, debug=debug)
