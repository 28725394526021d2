"""Issue 3, drills: a passing drill reports RTO, RPO and row counts; a drill against a backup
whose manifest disagrees with its data fails loudly; a drill against a forged manifest fails
naming it (issue 9); no scratch database is ever left."""

from __future__ import annotations

import json

import pytest

from regionvault import manifest_store
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.drill import DrillFailed, list_reports
from regionvault.manifest import BackupRef
from tests.integration.helpers import context, regionvault_cli, run_chain

pytestmark = pytest.mark.stack


def _scratch_databases(stack: DevStack) -> list[str]:
    assert stack.postgres is not None
    return [r[0] for r in stack.postgres.execute(
        "postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'rv_drill_%'")]


def test_scheduled_drill_passes_with_rto_rpo_and_row_counts(stack: DevStack) -> None:
    from tasks.drill import restore_drill

    for source in context(stack, Domain.AU).dcfg.sources:  # a drill covers every source
        run_chain(stack, Domain.AU, source.name)
    outcome = restore_drill.apply_async(kwargs={"domain": "au"}).get(timeout=180)
    assert outcome["passed"] is True

    report = next(r for r in list_reports(context(stack, Domain.AU))
                  if r.drill_id == outcome["drill_id"])
    assert report.passed and report.domain == "au"
    assert {s.source for s in report.sources} >= {"accounts", "catalog"}
    for s in report.sources:
        assert s.passed, s.error
        assert s.rto_seconds is not None and s.rto_seconds > 0
        assert s.rpo_seconds is not None and s.rpo_seconds >= 0
        assert s.row_counts_expected and s.row_counts_expected == s.row_counts_found
        assert s.scratch_dropped
    accounts = next(s for s in report.sources if s.source == "accounts")
    assert accounts.check is not None and accounts.check.passed
    assert accounts.row_counts_found["public.customers"] >= 500
    assert _scratch_databases(stack) == []

    listed = regionvault_cli(stack, "drills", "--domain", "au")
    assert listed.returncode == 0 and outcome["drill_id"] in listed.stdout


def test_drill_against_wrong_row_counts_fails_and_cleans_up(stack: DevStack) -> None:
    """A manifest that regionvault itself signed, but whose row counts are wrong (a dump that
    miscounted): the MAC holds, and the drill's own comparison is what fails."""
    from tasks.drill import restore_drill

    backup_id = run_chain(stack, Domain.AU, "catalog")
    ctx = context(stack, Domain.AU)
    _, src = manifest_store.resolve(ctx, backup_id)
    mkey = manifest_store.keys_of(BackupRef.parse(backup_id), src)[1]
    for store in (ctx.s3, ctx.gcs):  # the manifest now claims one row more than was dumped
        manifest = manifest_store.read_manifest(ctx, store, mkey)
        assert manifest is not None
        counts = dict(manifest.row_counts)
        counts["public.plans"] += 1
        # signed with the domain key, as a legitimate (but wrong) manifest would be
        manifest_store.write_manifest(ctx, store, mkey,
                                      manifest.model_copy(update={"row_counts": counts}))

    result = restore_drill.apply_async(kwargs={"domain": "au", "source": "catalog"})
    with pytest.raises(DrillFailed, match="row counts differ"):
        result.get(timeout=120)
    assert result.failed()
    report = list_reports(ctx, limit=1)[0]
    assert not report.passed
    [entry] = report.sources
    assert entry.backup_id == backup_id and not entry.passed
    assert "public.plans: manifest" in (entry.error or "")
    assert entry.scratch_dropped
    assert _scratch_databases(stack) == []

    cli = regionvault_cli(stack, "drill", "--domain", "au", "--source", "catalog")
    assert cli.returncode != 0
    assert "row counts differ" in cli.stderr
    assert _scratch_databases(stack) == []


def test_drill_against_a_forged_manifest_fails_naming_it(stack: DevStack) -> None:
    """The same edit made by hand, without the domain key: the drill does not compare row
    counts it cannot trust, and does not fall back to an older backup in silence."""
    from tasks.drill import restore_drill

    backup_id = run_chain(stack, Domain.AU, "catalog")
    ctx = context(stack, Domain.AU)
    _, src = manifest_store.resolve(ctx, backup_id)
    mkey = manifest_store.keys_of(BackupRef.parse(backup_id), src)[1]
    original = ctx.s3.get_bytes(mkey)
    data = json.loads(original)
    data["row_counts"]["public.plans"] += 1
    ctx.s3.put_bytes(mkey, json.dumps(data).encode())
    try:
        result = restore_drill.apply_async(kwargs={"domain": "au", "source": "catalog"})
        with pytest.raises(DrillFailed, match="fails its MAC"):
            result.get(timeout=120)
        report = list_reports(ctx, limit=1)[0]
        [entry] = report.sources
        assert not entry.passed and entry.scratch_dropped
        assert backup_id in (entry.error or "") and mkey in (entry.error or "")
        assert "s3 manifest s3://" in (entry.error or "")
        assert _scratch_databases(stack) == []
    finally:  # later tests drill this source again
        ctx.s3.put_bytes(mkey, original)
