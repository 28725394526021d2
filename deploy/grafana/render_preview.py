"""Draw docs/dashboard.png: the Grafana dashboard's panels, evaluated on a real demo run.

Not a Grafana screenshot. It starts the embedded dev stack (``regionvault.devstack``: a broker,
PostgreSQL with the sample sources, the S3 and GCS emulators, one real Celery worker per
domain), runs a short workload through the real workers (every source of every domain backed
up a few times, expiry sweeps, one restore drill, and one task published by hand into the
wrong domain's queue, which the residency guard refuses), and scrapes every worker's
``/metrics`` every ``--scrape`` seconds, as Prometheus would. Then it evaluates the queries of
the dashboard's panels (charts/regionvault/dashboards/regionvault.json) for one domain on
those samples, with small local stand-ins for the PromQL they use (``rate``/``increase`` over
a window, ``histogram_quantile`` with Prometheus's interpolation, ``max``/``sum by``), and draws
one matplotlib figure with the dashboard's panel titles and layout (its gridPos).

Where it differs from Prometheus, on purpose: a series is taken to start at 0 the first time
it is scraped (a short run would otherwise lose each series' first observations), and
``increase(...[1h])``/``[1d]`` is taken over the whole run, which is shorter than that.

    .venv/bin/python deploy/grafana/render_preview.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere: the project's packages
    sys.path.insert(0, str(REPO))

DASHBOARD = REPO / "charts" / "regionvault" / "dashboards" / "regionvault.json"

Labels = tuple[tuple[str, str], ...]
#: one scrape of every worker: (sample name, sorted labels) -> value
Snapshot = dict[tuple[str, Labels], float]


# --- scraping ---------------------------------------------------------------------------------


@dataclass
class Scraper:
    """Scrapes every worker's exporter every ``interval`` seconds in a thread."""

    ports: dict[str, int]
    interval: float
    times: list[float] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def scrape(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        snapshot: Snapshot = {}
        for port in self.ports.values():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=5).read().decode()
            except OSError:
                continue  # a scrape that fails is a gap, as in Prometheus
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    snapshot[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        self.times.append(time.time())
        self.snapshots.append(snapshot)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.scrape()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --- the workload ------------------------------------------------------------------------------


def _wait_done(backup_ids: Iterable[str], timeout: float = 600) -> None:
    from regionvault.journal import BackupState, StepState
    from regionvault.manifest import Step
    from workers.journal import journal

    waiting = set(backup_ids)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for backup_id in sorted(waiting):
            record = journal().get(backup_id)
            if record is None:
                continue
            if record.steps[Step.EXPIRE].state is StepState.DONE:
                waiting.discard(backup_id)
            elif record.state in (BackupState.FAILED, BackupState.CANCELLED):
                print(f"  backup {backup_id} {record.state.value}: {record.error}")
                waiting.discard(backup_id)
        time.sleep(0.3)
    if waiting:
        raise SystemExit(f"backups not done in {timeout:.0f}s: {sorted(waiting)}")


def run_workload(stack: Any, domain: str, rounds: int, per_round: int, pause: float,
                 ) -> list[tuple[float, str]]:
    """Back up every source of every domain ``per_round`` times at once, ``rounds`` times (the
    queues fill, then drain); sweep expiry after each round; one misrouted task and one drill
    of ``domain``. Returns (time, what) marks."""
    from regionvault.context import DomainContext
    from regionvault.manifest import new_backup_id
    from workers.app import app, app_for
    from workers.canvas import start_run

    config = stack.config
    marks: list[tuple[float, str]] = []
    for n in range(1, rounds + 1):
        ids = []
        for d, dcfg in config.domains.items():
            for _ in range(per_round):
                for src in dcfg.sources:
                    backup_id = new_backup_id(d, src.name, DomainContext(config, d).clock())
                    start_run(d.value, src.name, backup_id, deep_verify=True, note="dashboard")
                    ids.append(backup_id)
        marks.append((time.time(), f"round {n}: {len(ids)} backups queued"))
        print(f"round {n}: {len(ids)} backups queued in the domains' queues")
        _wait_done(ids)
        for d in config.domains:
            app_for(d).send_task("regionvault.expire_domain", kwargs={"domain": d.value}).get(
                timeout=300)
        if n == 1:
            # Published past the router into this domain's queue, as a bug would: the guard
            # of this domain's worker refuses it without running it.
            other = next(d for d in config.domains if d.value != domain)
            app.send_task("regionvault.dump", queue=f"backup.{domain}", kwargs={
                "backup_id": new_backup_id(other, "accounts",
                                           DomainContext(config, other).clock()),
                "domain": other.value, "source": "accounts"})
            marks.append((time.time(), f"a {other.value} task sent to backup.{domain}"))
            print(f"published one {other.value} task into backup.{domain} (refused)")
        if n == max(1, rounds - 1):
            print(f"restore drill of {domain}")
            app_for(domain).send_task("regionvault.restore_drill",
                                      kwargs={"domain": domain}).get(timeout=600)
            marks.append((time.time(), f"drill of {domain}"))
        time.sleep(pause)
    return marks


# --- local stand-ins for the panels' PromQL -------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    times: list[float]
    snapshots: list[Snapshot]

    def select(self, i: int, name: str, match: dict[str, str]) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.snapshots[i].items()
                if n == name and all(dict(labels).get(k) == val for k, val in match.items())}

    def before(self, i: int, window: float) -> int:
        """The index of the newest scrape at least ``window`` seconds before scrape ``i``
        (the first scrape if there is none)."""
        j = i
        while j > 0 and self.times[i] - self.times[j] < window:
            j -= 1
        return j

    def increase(self, i: int, name: str, match: dict[str, str], window: float,
                 ) -> dict[Labels, float]:
        j = self.before(i, window)
        then = self.select(j, name, match)
        now = self.select(i, name, match)
        return {labels: v - then.get(labels, 0.0) for labels, v in now.items()}

    def rate(self, i: int, name: str, match: dict[str, str], window: float,
             ) -> dict[Labels, float]:
        j = self.before(i, window)
        elapsed = self.times[i] - self.times[j]
        if elapsed <= 0:
            return {}
        return {k: v / elapsed for k, v in self.increase(i, name, match, window).items()}


def by(values: dict[Labels, float], keys: Iterable[str],
       how: Callable[[list[float]], float] = sum) -> dict[tuple[str, ...], float]:
    """``sum by (keys)`` (or ``max by``) over labelled values."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for labels, v in values.items():
        as_dict = dict(labels)
        groups.setdefault(tuple(as_dict.get(k, "") for k in keys), []).append(v)
    return {k: how(vs) for k, vs in groups.items()}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's histogram_quantile over cumulative bucket counts {le: count}."""
    if not buckets:
        return math.nan
    les = sorted(buckets)
    if les[-1] != math.inf:
        return math.nan
    total = buckets[math.inf]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if le == math.inf:
                return prev_le
            if le <= 0:
                return le
            return prev_le + (le - prev_le) * ((rank - prev_count) / (count - prev_count or 1))
        prev_le, prev_count = le, count
    return prev_le


Lines = dict[str, list[float]]


def evaluate(samples: Samples, domain: str, window: float) -> dict[int, Lines]:
    """Every time-series panel's lines, by panel id, one value per scrape."""
    d = {"domain": domain}
    out: dict[int, Lines] = {pid: {} for pid in range(1, 11)}
    run = samples.times[-1] - samples.times[0] + 1  # "[1h]" and "[1d]": the whole run

    def put(pid: int, legend: str, i: int, value: float) -> None:
        out[pid].setdefault(legend, [math.nan] * len(samples.times))[i] = value

    for i, now in enumerate(samples.times):
        put(1, "workers", i, sum(samples.select(i, "regionvault_worker_info", d).values()))
        for (queue,), v in by(samples.select(i, "regionvault_queue_depth", d), ["queue"],
                              max).items():
            put(2, queue, i, v)
        for (store,), v in by(samples.select(i, "regionvault_oldest_pii_age_seconds", d),
                              ["store"], max).items():
            put(3, store, i, v)
        verified = by(samples.select(
            i, "regionvault_last_verified_backup_timestamp_seconds", d), ["source"], max)
        for (source,), v in verified.items():
            put(4, f"age {source}", i, now - v)
        for (source,), v in by(samples.select(i, "regionvault_source_rpo_seconds", d),
                               ["source"], max).items():
            put(4, f"RPO {source}", i, v)
        passed = samples.select(i, "regionvault_drill_last_success_timestamp_seconds", d)
        if passed:
            put(5, "since last passed drill", i, now - max(passed.values()))
        failed = samples.increase(i, "regionvault_drill_failures_total", d, run)
        put(5, "failed drills (1 d)", i, sum(failed.values()))
        buckets = samples.rate(i, "regionvault_step_duration_seconds_bucket", d, window)
        per_step: dict[str, dict[float, float]] = {}
        for (le, step), v in by(buckets, ["le", "step"]).items():
            per_step.setdefault(step, {})[float(le)] = v
        for step, counts in per_step.items():
            put(6, step, i, histogram_quantile(0.5, counts))
            put(7, step, i, histogram_quantile(0.95, counts))
        for (step,), v in by(samples.rate(i, "regionvault_step_bytes_total", d, window),
                             ["step"]).items():
            put(8, step, i, v)
        for (source, step), v in by(samples.increase(i, "regionvault_step_failures_total", d,
                                                     run), ["source", "step"]).items():
            put(9, f"{source} {step}", i, v)
        for (task_domain,), v in by(samples.increase(
                i, "regionvault_misrouted_tasks_refused_total", {"worker_domain": domain}, run),
                ["task_domain"]).items():
            put(10, f"task of {task_domain}", i, v)
    return out


# --- the picture --------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _bytes(rate: float) -> str:
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if abs(rate) >= size:
            return f"{rate / size:.3g} {unit}"
    return f"{rate:.3g} B/s"


def draw(dashboard: dict[str, Any], lines: dict[int, Lines], times: list[float], domain: str,
         marks: list[tuple[float, str]], out: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.62 + 1.6))
    grid = fig.add_gridspec(rows, 24, left=0.05, right=0.98, top=1 - 1.25 / (rows * 0.62 + 1.6),
                            bottom=0.04, hspace=6.0, wspace=2.2)
    stamps = mdates.date2num([datetime.fromtimestamp(t, UTC) for t in times])
    seconds = FuncFormatter(lambda v, _: _duration(v))
    rates = FuncFormatter(lambda v, _: _bytes(v))
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
        ax.tick_params(labelsize=7)
        data = lines.get(panel["id"], {})
        if panel["type"] == "stat":
            value = next(iter(data.values()), [math.nan])[-1]
            ax.axis("off")
            ax.text(0.5, 0.45, "No data" if math.isnan(value) else f"{value:.0f}",
                    ha="center", va="center", fontsize=40, fontweight="bold",
                    color="#1a7f37" if value >= 1 else "#c62828", transform=ax.transAxes)
            continue
        visible = {k: v for k, v in data.items() if any(not math.isnan(x) for x in v)}
        ax.set_xlim(stamps[0], stamps[-1])
        if not visible:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey",
                    transform=ax.transAxes)
            ax.set_yticks([])
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if panel["id"] == 5:  # drills: the time since a passed drill, and failures on the right
            right = ax.twinx()
            right.tick_params(labelsize=7)
            for legend, values in visible.items():
                if legend.startswith("failed"):
                    right.step(stamps, values, where="post", color="#c62828", label=legend)
                    right.set_ylim(0, max(1.0, *[v for v in values if not math.isnan(v)]) + 1)
                else:
                    ax.plot(stamps, values, label=legend, lw=1.6)
            ax.yaxis.set_major_formatter(seconds)
            handles = ax.get_legend_handles_labels()
            more = right.get_legend_handles_labels()
            ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
        elif panel["id"] == 8 and visible:  # bytes per step, stacked as in the dashboard
            names = sorted(visible)
            ax.stackplot(stamps, [[0 if math.isnan(x) else x for x in visible[n]]
                                  for n in names], labels=names, alpha=0.75)
            ax.yaxis.set_major_formatter(rates)
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        else:
            for legend in sorted(visible):
                dashed = legend.startswith("RPO")
                ax.plot(stamps, visible[legend], label=legend, lw=1.6,
                        ls="--" if dashed else "-",
                        drawstyle="steps-post" if panel["id"] in (2, 9, 10) else "default")
            if unit == "s":
                ax.yaxis.set_major_formatter(seconds)
            if visible:
                ax.legend(fontsize=7, loc="upper left", ncol=2)
        if panel["id"] == 4 and visible:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(seconds)
            ax.text(0.99, 0.03, "log scale", ha="right", fontsize=7, color="grey",
                    transform=ax.transAxes)
        if panel["id"] == 3:
            ax.text(0.99, 0.03, "ceiling: 29 d (far above this run)", ha="right", fontsize=7,
                    color="grey", transform=ax.transAxes)
        if panel["id"] in (2, 9, 10):
            ax.set_ylim(bottom=0)
        for t, _ in marks:
            ax.axvline(float(mdates.date2num(datetime.fromtimestamp(t, UTC))), color="grey",
                       lw=0.5, ls=":")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
        ax.grid(alpha=0.3)
    started = datetime.fromtimestamp(times[0], UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"regionvault dashboard, domain = {domain}", x=0.05, ha="left",
                 fontsize=15, fontweight="bold")
    fig.text(0.05, 1 - 1.0 / (rows * 0.62 + 1.6),
             "Rendered from a demo run's scraped metrics with matplotlib, not a Grafana "
             f"screenshot. The embedded dev stack ({started}): {len(times)} scrapes of every "
             "worker's /metrics, the dashboard's queries evaluated locally.\nDotted lines: "
             + "; ".join(what for _, what in marks) + ".",
             fontsize=9, color="#444", va="bottom")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--domain", default="eu", help="the dashboard's $domain (default eu)")
    parser.add_argument("--rounds", type=int, default=4, help="backup rounds (default 4)")
    parser.add_argument("--per-round", type=int, default=3,
                        help="backups of each source started at once per round (default 3)")
    parser.add_argument("--pause", type=float, default=15.0,
                        help="seconds between rounds (default 15)")
    parser.add_argument("--scrape", type=float, default=1.5,
                        help="seconds between scrapes (default 1.5)")
    # Grafana's $__rate_interval is at least four scrape intervals; a little more here, so
    # that a rate sees several scrapes
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds of the rate() window, the $__rate_interval (default 10)")
    parser.add_argument("--dpi", type=int, default=72)
    parser.add_argument("--save-samples", type=Path,
                        help="also write the scraped samples and marks to this JSON file")
    parser.add_argument("--from-samples", type=Path,
                        help="draw from samples saved by --save-samples; run no workload")
    args = parser.parse_args(argv)
    dashboard = json.loads(DASHBOARD.read_text())
    if args.from_samples:
        saved = json.loads(args.from_samples.read_text())
        samples = Samples(saved["times"], [
            {(n, tuple((k, v) for k, v in labels)): value for n, labels, value in snap}
            for snap in saved["snapshots"]])
        marks = [(t, what) for t, what in saved["marks"]]
    else:
        samples, marks = _run(args)
    lines = evaluate(samples, args.domain, args.window)
    draw(dashboard, lines, samples.times, args.domain, marks, args.out, args.dpi)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB, {len(samples.times)} scrapes)")
    return 0


def _run(args: argparse.Namespace) -> tuple[Samples, list[tuple[float, str]]]:
    """Start the stack, scrape while the workload runs, stop it; the samples and marks."""

    from regionvault.config import load_config
    from regionvault.devstack.stack import DevStack
    from workers.app import app, configure

    root = Path(tempfile.mkdtemp(prefix="rv-dashboard-"))
    stack = DevStack(data_dir=root, beat=False, flower=False, say=lambda m: print(f"· {m}"))
    try:
        stack.start()
        os.environ.update(stack.env)
        configure(app, load_config())
        scraper = Scraper({d.value: p for d, p in stack.metrics_ports.items()}, args.scrape)
        scraper.start()
        time.sleep(args.pause)
        marks = run_workload(stack, args.domain, args.rounds, args.per_round, args.pause)
        scraper.stop()
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    samples = Samples(scraper.times, scraper.snapshots)
    if args.save_samples:
        args.save_samples.write_text(json.dumps({
            "times": samples.times, "marks": marks,
            "snapshots": [[[n, labels, v] for (n, labels), v in snap.items()]
                          for snap in samples.snapshots]}))
    return samples, marks


if __name__ == "__main__":
    raise SystemExit(main())
