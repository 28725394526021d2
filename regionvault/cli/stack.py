"""The embedded stack: ``dev`` runs it, ``demo`` runs the whole job on it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from regionvault.cli.common import ConfigOption, app, dispatcher, err, guarded, out

# --- the embedded stack ----------------------------------------------------------------------


def _stay_until_signal() -> None:
    stop = {"now": False}

    def handler(signum: int, _: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop["now"]:
        time.sleep(0.5)


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where the stack keeps its state")]
    = Path(".rv-dev"),
    config: ConfigOption = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, max=64,
        help="pool processes of each domain's worker (steps of one domain run in parallel)")]
    = 1,
    per_domain_brokers: Annotated[bool, typer.Option(
        "--per-domain-brokers",
        help="a broker, a beat and a Flower per domain (the strict-residency topology)")]
    = False,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C or SIGTERM."""
    from regionvault.devstack.stack import DevStack

    def run() -> None:
        # the sample sources include the Journeys ones (MariaDB, Bigtable, Cloud Files)
        stack = DevStack(data_dir=data_dir, config_file=config, concurrency=concurrency,
                         journeys=config is None, per_domain_brokers=per_domain_brokers,
                         say=lambda m: err.print(f"[dim]{m}[/]"))
        stack.start()
        try:
            out.print(f"\n[bold green]regionvault dev stack is up[/]; environment in "
                      f"{stack.env_file}:")
            for key, value in sorted(stack.env.items()):
                if "PASSWORD" not in key:
                    out.print(f"  {key}={value}", highlight=False)
            for domain, port in sorted(stack.flower_ports.items(),
                                       key=lambda item: item[0].value if item[0] else ""):
                out.print(f"  Flower of {domain.value if domain else 'the shared broker'}: "
                          f"http://127.0.0.1:{port}", highlight=False)
            out.print(f"\n  source {stack.env_file}   # then: regionvault list\n"
                      "Ctrl-C stops everything.")
            _stay_until_signal()
        finally:
            err.print("stopping the stack")
            stack.stop()

    guarded(run)


@app.command()
def demo(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Start the embedded stack, back up every sample source, restore one, print a summary."""
    from regionvault.demo import run_demo

    # the workers are reached once the stack is up and its endpoints are in the environment
    code = guarded(lambda: run_demo(data_dir, out, err, lambda d: dispatcher(ctx, d)))
    raise typer.Exit(code)
