"""Commands about backups: start one, check the set-up, list, show and verify.

``check`` and ``verify`` read a domain's keys and DSNs: they run on the domain's own workers
(``--local``: in this process, on a machine inside the domain), so that the operator's
process holds no domain's secrets, let alone two domains'."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from regionvault.cli.common import (
    ConfigOption,
    app,
    config_from,
    context_for,
    dispatcher,
    err,
    guarded,
    operator,
    out,
    still_running,
)
from regionvault.cli.jsonout import (
    document,
    list_document,
    print_document,
    print_event,
    show_document,
    shown_manifest,
    untrusted_entry,
)
from regionvault.context import DomainContext, utc_now
from regionvault.dispatch import Dispatcher, WorkersUnreachable
from regionvault.domains import Domain, parse_domain
from regionvault.errors import BackupBusy, ConfigError, RegionvaultError
from regionvault.manifest import BackupRef, Manifest, new_backup_id

if TYPE_CHECKING:
    from regionvault.manifest_store import UntrustedManifest

# --- backup ----------------------------------------------------------------------------------


@app.command()
def backup(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option("--domain", "-d", help="us, eu or au")],
    source: Annotated[str | None, typer.Option("--source", "-s", help="a source of that domain")]
    = None,
    all_sources: Annotated[bool, typer.Option("--all", help="every source of the domain")]
    = False,
    wait: Annotated[bool, typer.Option("--wait", help="follow the chain live until it ends")]
    = False,
    deep: Annotated[bool, typer.Option("--deep", help="verify by reading both copies")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 3600,
    force: Annotated[bool, typer.Option(
        "--force", help="start even while another backup of the source is in flight")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only JSON events, one a line (schema regionvault/event/v1)")]
    = False,
    config: ConfigOption = None,
) -> None:
    """Start an ad-hoc backup (in the domain's own queue); exit 0 with --wait only if verified.

    Refused (exit 3) while another backup of the same source is queued or running, naming
    it; --force starts one anyway. With --json stdout carries events only: ``queued`` per
    backup, then with --wait its ``step`` and ``progress`` events and an ``end`` event."""

    def run() -> None:
        cfg = config_from(config)
        d = parse_domain(domain)
        if all_sources == bool(source):
            raise ConfigError("give --source S or --all")
        names = [s.name for s in cfg.domain(d).sources] if all_sources else [str(source)]
        for name in names:
            cfg.source(d, name)  # unknown domain or source: refused before anything is sent
        queue = dispatcher(ctx, d)
        if not force:
            for name in names:
                _refuse_if_in_flight(queue, d.value, name)
        from regionvault.follow import follow, queued_event

        say = err if as_json else out  # under --json, stdout is for the events alone
        started = []
        for name in names:
            backup_id = new_backup_id(d, name, DomainContext(cfg, d).clock())
            queue.start_run(d.value, name, backup_id, deep_verify=deep,
                            note=f"ad-hoc backup by {operator()}")
            started.append(backup_id)
            if as_json:
                print_event(queued_event(backup_id, d.value, name, f"backup.{d.value}",
                                         utc_now()))
            else:
                out.print(f"backup {backup_id} queued in backup.{d.value}")
        if not wait:
            for backup_id in started:
                say.print(f"  follow it with: regionvault watch {backup_id}")
            return
        results = [follow(queue.journal(), backup_id, say, queue.progress, timeout=timeout,
                          emit=print_event if as_json else None)
                   for backup_id in started]
        if not all(r.verified for r in results):
            raise typer.Exit(1)

    guarded(run)


def _refuse_if_in_flight(queue: Dispatcher, domain: str, source: str) -> None:
    running = [r for r in queue.journal().for_source(domain, source) if r.in_flight]
    if running:
        raise BackupBusy(
            f"backup {running[0].backup_id} of source {source!r} in domain {domain!r} is still "
            f"{running[0].state.value}; watch it (regionvault watch {running[0].backup_id}) "
            "or pass --force to start another")


@app.command()
def check(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="check here, reading the keys and DSNs in this process (a machine "
        "inside the domain), not on the domain's workers")] = False,
    timeout: Annotated[float, typer.Option(
        help="seconds each domain's workers have to answer")] = 120,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only the JSON document (schema regionvault/check/v1)")] = False,
    config: ConfigOption = None,
) -> None:
    """Preflight each domain on its own workers: keys, DSNs, buckets' regions, lifecycle rules.

    One domain with --domain. Run with the workers' configuration: keys and DSNs readable,
    buckets in their regions, buckets' lifecycle rules as the retention policy requires.

    Exit 3 naming a rule that is missing or weaker (or a key in use that is not held), 2 for
    keys or DSNs that cannot be read, 4 for a domain whose workers do not answer within
    --timeout (the other domains are still checked); with several, the highest. With --json
    stdout carries one document with an entry per domain; the findings also go to stderr."""

    def run() -> int:
        cfg = config_from(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        for d in domains:
            cfg.domain(d)  # a domain not configured: refused before anything is sent
        if local and not as_json:
            return max(check_domain(context_for(cfg, d)).exit_code for d in domains)
        if local:
            reports = [check_captured(context_for(cfg, d)) for d in domains]
            for report in reports:
                report.print(stdout=False)
        else:
            reports = _check_on_workers(ctx, domains, timeout, show=not as_json)
        code = max((r.exit_code for r in reports), default=0)
        if as_json:
            print_document(document("check", utc_now(), exit_code=code,
                                    domains=[r.as_json() for r in reports]))
        return code

    code = guarded(run)
    if code:
        raise typer.Exit(code)


@dataclass(frozen=True)
class DomainCheck:
    """What ``check`` found in one domain: the lines it prints, and the same as fields. Made
    where the domain's secrets are (its worker, or this process with --local), printed by the
    command line. No secret is in it: key ids, bucket names, rules, source and store names,
    and errors that name where a secret was looked for."""

    domain: str
    out: tuple[str, ...]
    err: tuple[str, ...]
    #: 0, 3 (a rule missing or weaker, a key in use not held) or the stopping error's code
    exit_code: int
    #: every key in use is held; None when the check stopped before it knew
    keys_ok: bool | None = None
    #: the sources whose DSN could be read, and the stores found in the domain's region
    sources: tuple[str, ...] = ()
    stores: tuple[str, ...] = ()
    #: lifecycle rules and object lock as the policy requires; None when not reached
    rules_ok: bool | None = None
    #: the sentence of the error that stopped the check (or kept it from running)
    error: str | None = None
    #: False when the domain's workers could not be reached or did not answer in time
    reached: bool = True

    def as_dict(self) -> dict[str, object]:
        """What a worker returns (the fields as plain data)."""
        return {"domain": self.domain, "out": list(self.out), "err": list(self.err),
                "exit_code": self.exit_code, "keys_ok": self.keys_ok,
                "sources": list(self.sources), "stores": list(self.stores),
                "rules_ok": self.rules_ok, "error": self.error}

    @classmethod
    def from_dict(cls, data: Any) -> DomainCheck:
        """Also the answer of a worker older than the structured fields (lines only)."""
        def flag(name: str) -> bool | None:
            value = data.get(name)
            return None if value is None else bool(value)

        return cls(domain=str(data["domain"]), out=tuple(str(x) for x in data["out"]),
                   err=tuple(str(x) for x in data["err"]), exit_code=int(data["exit_code"]),
                   keys_ok=flag("keys_ok"), sources=tuple(str(x) for x in data.get("sources", ())),
                   stores=tuple(str(x) for x in data.get("stores", ())),
                   rules_ok=flag("rules_ok"),
                   error=None if data.get("error") is None else str(data["error"]))

    def as_json(self) -> dict[str, Any]:
        """The domain's entry in ``check --json`` (schema ``check.schema.json``)."""
        return {"domain": self.domain, "exit_code": self.exit_code,
                "ok": self.exit_code == 0, "reached": self.reached, "keys_ok": self.keys_ok,
                "sources_checked": list(self.sources), "stores_checked": list(self.stores),
                "rules_ok": self.rules_ok, "error": self.error,
                "messages": list(self.out), "findings": list(self.err)}

    def print(self, *, stdout: bool = True) -> None:
        """The lines as the check printed them; with ``stdout`` False only its complaints
        (under --json they are the findings, told on stderr as well)."""
        for line in self.out if stdout else ():
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        for line in self.err:
            err.print(line, markup=False, highlight=False, soft_wrap=True)


def check_domain(ctx: DomainContext) -> DomainCheck:
    """Check one domain in this process, printing as it goes (the result's ``out`` and
    ``err`` are left empty: see ``check_captured``). An error that stops the check (a DSN or
    key that cannot be read) is printed as one sentence and gives its own exit code: the
    other domains are still checked."""
    from regionvault.cli.keys import report_keys
    from regionvault.cli.provision import EXIT_NOT_COMPLIANT, report_rules
    from regionvault.sources import open_source

    d = ctx.domain
    keys_ok: bool | None = None
    rules_ok: bool | None = None
    sources: list[str] = []
    stores: list[str] = []
    error: str | None = None
    try:
        keys_ok = report_keys(ctx)
        for src in ctx.dcfg.sources:
            open_source(d, src)  # reads the DSN: a missing secret fails here
            sources.append(src.name)
        for name in ctx.store_names:  # s3, gcs, and the Cloud Files container if any
            ctx.ensure_resident(name)
            stores.append(name)
        out.print(f"domain {d.value}: keys, {len(ctx.dcfg.sources)} source DSNs and "
                  f"{len(ctx.store_names)} buckets ({', '.join(ctx.store_names)}) ok")
        rules_ok = report_rules(ctx)
    except RegionvaultError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        code, error = exc.exit_code, str(exc)
    else:
        code = 0 if rules_ok and keys_ok else EXIT_NOT_COMPLIANT
    return DomainCheck(d.value, (), (), code, keys_ok=keys_ok, sources=tuple(sources),
                       stores=tuple(stores), rules_ok=rules_ok, error=error)


def check_captured(ctx: DomainContext) -> DomainCheck:
    """``check_domain``, its output kept rather than printed (what a worker returns)."""
    with out.capture() as printed, err.capture() as complained:
        found = check_domain(ctx)
    return replace(found, out=tuple(printed.get().splitlines()),
                   err=tuple(complained.get().splitlines()))


def _check_on_workers(ctx: typer.Context, domains: list[Domain], timeout: float, *,
                      show: bool) -> list[DomainCheck]:
    """Send every domain's check to its own workers at once, then print each report as it
    comes (``show``; else only its complaints, on stderr); a domain that cannot be reached,
    or whose workers do not answer in time, is reported (exit 4) and the others still are."""
    sent: dict[Domain, tuple[Dispatcher, str]] = {}
    reports: list[DomainCheck] = []
    for d in domains:
        try:
            queue = dispatcher(ctx, d)
            sent[d] = (queue, queue.check(d.value, within=timeout))
        except WorkersUnreachable as exc:
            reports.append(_unreachable(d, str(exc), exc.exit_code))
    deadline = time.monotonic() + timeout
    for d, (queue, task_id) in sent.items():
        try:
            outcome = queue.wait(task_id, timeout=max(deadline - time.monotonic(), 0.1))
        except TimeoutError:
            reports.append(_unreachable(
                d, f"its workers did not answer within {timeout:.0f}s (task {task_id}; "
                   "dropped unrun unless a worker has started it)",
                WorkersUnreachable.exit_code))
            continue
        except WorkersUnreachable as exc:
            reports.append(_unreachable(d, str(exc), exc.exit_code))
            continue
        if not outcome.ok:
            why = f"domain {d.value}: the check failed on its workers: {outcome.error}"
            err.print(f"[bold red]error:[/] {escape(why)}", highlight=False, soft_wrap=True)
            reports.append(DomainCheck(d.value, (), (), outcome.raised.exit_code
                                       if outcome.raised else 1, error=why))
            continue
        report = DomainCheck.from_dict(outcome.value)
        report.print(stdout=show)
        reports.append(report)
    return reports


def _unreachable(d: Domain, why: str, code: int) -> DomainCheck:
    err.print(f"[bold red]domain {d.value} not checked:[/] {escape(why)}", highlight=False,
              soft_wrap=True)
    return DomainCheck(d.value, (), (), code, error=why, reached=False)


# --- catalogue -------------------------------------------------------------------------------


def _manifest_row(m: Manifest) -> list[str]:
    state = f"{m.state()} (legacy, no MAC)" if m.legacy else m.state()
    if m.erasure is not None:
        state = (f"[bold]erased[/] {m.erasure.erased_at:%Y-%m-%d} by {escape(m.erasure.by)}: "
                 f"{escape(m.erasure.reason)}")
    return [m.backup_id, m.domain.value, m.source, m.data_class.value, state,
            f"{m.ciphertext_size:,}", m.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
            m.expires_at.strftime("%Y-%m-%d")]


def _untrusted_row(u: UntrustedManifest) -> list[str]:
    """Only what the key itself says: nothing inside an untrusted manifest is shown."""
    shown = untrusted_entry(u)
    state = "[bold red]FORGED[/]" if u.forged else "[bold red]unreadable[/]"
    return [u.backup_id, shown["domain"], shown["source"], shown["data_class"], state, "-",
            "-", "-"]


@app.command("list")
def list_backups(
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    source: Annotated[str | None, typer.Option("--source", "-s")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only the JSON document (schema regionvault/list/v1)")] = False,
    config: ConfigOption = None,
) -> None:
    """List backups by reading the manifests in the stores (S3, else GCS).

    A manifest that fails its MAC is listed as FORGED (one that cannot be parsed as
    unreadable), with only what its key says, and named on stderr; the others still list.
    With --json they are under ``untrusted``, apart from the backups."""

    def run() -> None:
        from regionvault.catalogue import listing

        cfg = config_from(config)
        domains = [parse_domain(domain)] if domain else list(cfg.domains)
        if source and not domain:
            raise ConfigError("--source needs --domain (source names are per domain)")
        listings = [listing(context_for(cfg, d), source) for d in domains]
        untrusted = [u for found in listings for u in found.untrusted]
        if as_json:
            print_document(list_document([m for found in listings for m in found.manifests],
                                         untrusted, utc_now()))
        else:
            table = Table("backup id", "domain", "source", "class", "state", "bytes",
                          "created", "expires")
            for found in listings:
                for manifest in found.manifests:
                    table.add_row(*_manifest_row(manifest))
                for bad in found.untrusted:
                    table.add_row(*_untrusted_row(bad))
            out.print(table)
        for problem in (str(u.error) for u in untrusted):
            err.print(f"[bold red]untrusted manifest:[/] {problem}", highlight=False,
                      soft_wrap=True)

    guarded(run)


@app.command()
def show(
    backup_id: str,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print only the JSON document (schema regionvault/show/v1)")] = False,
    config: ConfigOption = None,
) -> None:
    """Show a backup's manifest as each store holds it (a forged copy: only why)."""

    def run() -> None:
        from regionvault.catalogue import find_copies
        from regionvault.manifest_store import UntrustedManifest

        ref = BackupRef.parse(backup_id)
        ctx = context_for(config_from(config), ref.domain)
        copies = find_copies(ctx, backup_id)
        if as_json:
            print_document(show_document(backup_id, copies, utc_now()))
            return
        for store, manifest in copies.items():
            if isinstance(manifest, UntrustedManifest):
                label = "FORGED" if manifest.forged else "unreadable"
                out.print(f"[bold]{store}[/]: [bold red]{label}[/]: {manifest.error}",
                          highlight=False, soft_wrap=True)
                continue
            legacy = " (legacy version-1 manifest, no MAC)" if manifest.legacy else ""
            out.print(f"[bold]{store}[/]: {manifest.state()}{legacy}")
            if manifest.erasure is not None:
                record = manifest.erasure
                out.print(f"[bold]{store}[/]: ERASED on "
                          f"{record.erased_at.isoformat(timespec='seconds')} by "
                          f"{escape(record.by)}: {escape(record.reason)}", highlight=False)
            out.print_json(data=shown_manifest(manifest))

    guarded(run)


@app.command()
def verify(
    ctx: typer.Context,
    backup_id: str,
    deep: Annotated[bool, typer.Option("--deep", help="read both copies back")] = False,
    local: Annotated[bool, typer.Option(
        "--local", help="verify here (a machine inside the domain), not on its workers")]
    = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the workers")] = 3600,
    config: ConfigOption = None,
) -> None:
    """Verify a backup's two copies against its manifest, on the domain's own workers (with
    --local: in this process); exit 0 only when verified."""

    def run() -> None:
        ref = BackupRef.parse(backup_id)
        cfg = config_from(config)
        cfg.source(ref.domain, ref.source)  # unknown domain or source: refused here
        if local:
            from regionvault import chain

            detail = chain.verify(context_for(cfg, ref.domain), backup_id, deep=deep).detail
        else:
            queue = dispatcher(ctx, ref.domain)
            task_id = queue.verify(backup_id, ref.domain.value, ref.source, deep=deep)
            detail = finished(queue, task_id, timeout, f"the verification of {backup_id}",
                              ref.domain)["detail"]
        out.print(f"backup {backup_id} verified: {detail}")

    guarded(run)


def finished(queue: Dispatcher, task_id: str, timeout: float, what: str,
             domain: Domain) -> Any:
    """What the task ``task_id`` returned, once it ends; raised as its own error when it
    failed (the same sentence and exit code as in this process)."""
    try:
        return queue.wait(task_id, timeout=timeout).unwrap()
    except TimeoutError:
        raise still_running(what, timeout, domain, task_id) from None
