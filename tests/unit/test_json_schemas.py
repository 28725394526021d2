"""The ``--json`` documents: every schema shipped in ``regionvault/schemas`` is a valid draft
2020-12 schema, and the pure builders in ``regionvault.cli.jsonout`` and ``regionvault.follow``
make documents those schemas accept (and the schemas refuse what they must)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jsonschema
import pytest

from regionvault.cli.backups import DomainCheck
from regionvault.cli.jsonout import (
    KINDS,
    document,
    drills_document,
    list_document,
    show_document,
    status_document,
)
from regionvault.documents import load_schema, schema_id
from regionvault.drill import CheckResult, DrillReport, SourceDrill
from regionvault.errors import IntegrityError, ManifestForged
from regionvault.follow import (
    EVENT_SCHEMA,
    FollowResult,
    end_event,
    progress_event,
    queued_event,
    step_event,
)
from regionvault.journal import BackupRecord, BackupState, JournalEntry, StepState
from regionvault.manifest import STEPS, Step
from regionvault.manifest_store import UntrustedManifest
from regionvault.status import AttemptStatus, Freshness, SourceStatus
from tests.unit.test_manifest import BACKUP_ID, WHEN, make_manifest

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(kind),
                                           format_checker=jsonschema.FormatChecker())


def _valid(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    _validator(kind).validate(doc)
    return doc


def _errors(kind: str, doc: dict[str, Any]) -> list[str]:
    return [e.message for e in _validator(kind).iter_errors(doc)]


def test_every_schema_file_is_a_draft_2020_12_schema_named_for_its_kind() -> None:
    files = sorted(p.name for p in resources.files("regionvault").joinpath("schemas").iterdir()
                   if p.name.endswith(".schema.json"))
    assert files == sorted(f"{kind}.schema.json" for kind in KINDS)
    for kind in KINDS:
        schema = load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["properties"]["schema"]["const"] == schema_id(kind)
        assert schema["properties"]["schema_version"]["const"] == 1
    assert schema_id("compliance") == "regionvault/compliance/v1"  # the existing format
    assert schema_id("event") == EVENT_SCHEMA


# --- status ----------------------------------------------------------------------------------


def _attempt(*, stuck: bool) -> AttemptStatus:
    return AttemptStatus(
        backup_id=BACKUP_ID, state=BackupState.RUNNING, step=Step.UPLOAD,
        step_state=StepState.RUNNING, last_progress_at=NOW - timedelta(minutes=20),
        idle=timedelta(minutes=20), stuck_since=NOW - timedelta(minutes=20) if stuck else None,
        lease_holder=None, lease_known=True, resumes=2)


ROWS = [
    SourceStatus(domain="eu", source="accounts", rpo=timedelta(hours=26),
                 state=Freshness.FRESH, last_verified_id=BACKUP_ID,
                 last_verified_at=NOW - timedelta(hours=2), age=timedelta(hours=2)),
    SourceStatus(domain="eu", source="events", rpo=timedelta(hours=26), state=Freshness.STUCK,
                 last_failure_id="eu.events.20261127T020000Z.00000000", last_failure_step="dump",
                 last_failure_error="the source did not answer",
                 last_failure_at=NOW - timedelta(days=2),
                 newest_attempt=_attempt(stuck=True)),
    SourceStatus(domain="au", source="catalog", rpo=timedelta(hours=26),
                 state=Freshness.UNREACHABLE),
]


def test_status_document_names_each_source_with_its_freshness() -> None:
    doc = _valid("status", status_document(ROWS, NOW))
    assert doc["schema"] == "regionvault/status/v1" and doc["generated_at"] == \
        "2026-11-28T12:00:00+00:00"
    assert doc["freshness"] == "unreachable" and doc["exit_code"] == 4
    fresh, stuck, unreachable = doc["rows"]
    assert (fresh["source"], fresh["freshness"], fresh["age_seconds"], fresh["rpo_seconds"]) \
        == ("accounts", "fresh", 7200.0, 26 * 3600.0)
    assert fresh["newest_attempt"] is None and fresh["exit_code"] == 0
    attempt = stuck["newest_attempt"]
    assert (attempt["step"], attempt["step_state"], attempt["stuck"], attempt["idle_seconds"],
            attempt["resumes"]) == ("upload", "running", True, 1200.0, 2)
    assert stuck["last_failure_step"] == "dump"
    assert unreachable["last_verified_id"] is None and unreachable["age_seconds"] is None


def test_status_document_of_no_rows_is_fresh() -> None:
    doc = _valid("status", status_document([], NOW))
    assert (doc["freshness"], doc["exit_code"], doc["rows"]) == ("fresh", 0, [])


def test_status_schema_refuses_an_unknown_freshness_and_a_missing_field() -> None:
    doc = status_document(ROWS[:1], NOW)
    doc["rows"][0]["freshness"] = "ok"
    assert any("'ok' is not one of" in e for e in _errors("status", doc))
    doc = status_document(ROWS[:1], NOW)
    del doc["rows"][0]["age_seconds"]
    assert any("'age_seconds' is a required property" in e for e in _errors("status", doc))
    doc = status_document(ROWS[:1], NOW)
    doc["rows"][0]["dsn"] = "postgresql://secret@db"  # no field that is not in the schema
    assert any("Additional properties" in e for e in _errors("status", doc))


# --- list and show ---------------------------------------------------------------------------


def _forged() -> UntrustedManifest:
    key = f"eu/pii/accounts/{BACKUP_ID}.manifest.json"
    return UntrustedManifest(store="s3", key=key, error=ManifestForged(f"manifest s3:{key} "
                                                                       "fails its MAC"))


def test_list_document_has_the_backups_and_the_untrusted_apart() -> None:
    manifest = make_manifest().with_step(Step.VERIFY, WHEN)
    doc = _valid("list", list_document([manifest], [_forged()], NOW))
    (entry,) = doc["backups"]
    assert (entry["backup_id"], entry["state"], entry["data_class"], entry["ciphertext_size"],
            entry["created_at"]) == (BACKUP_ID, "verified", "pii", 700,
                                     "2026-11-28T02:00:05+00:00")
    (bad,) = doc["untrusted"]
    assert (bad["state"], bad["domain"], bad["data_class"], bad["source"]) == \
        ("forged", "eu", "pii", "accounts")


def test_list_schema_refuses_a_size_that_is_not_an_integer() -> None:
    doc = list_document([make_manifest()], [], NOW)
    doc["backups"][0]["ciphertext_size"] = "700"
    assert any("is not of type 'integer'" in e for e in _errors("list", doc))


def test_show_document_holds_each_store_copy_and_no_wrapped_key() -> None:
    manifest = make_manifest().with_step(Step.DUMP, WHEN, "1000 bytes")
    unreadable = UntrustedManifest(store="gcs", key="eu/pii/accounts/x.manifest.json",
                                   error=IntegrityError("not JSON"))
    doc = _valid("show", show_document(BACKUP_ID, {"s3": manifest, "gcs": unreadable}, NOW))
    s3, gcs = doc["copies"]["s3"], doc["copies"]["gcs"]
    assert s3["trusted"] and s3["manifest"]["backup_id"] == BACKUP_ID
    assert s3["manifest"]["steps"]["dump"]["detail"] == "1000 bytes"
    assert all(set(w) == {"wrapper", "key_id"} for w in s3["manifest"]["wrappings"])
    assert s3["manifest"]["wrappings"], "the test manifest has a wrapping"
    assert not gcs["trusted"] and gcs["manifest"] is None and gcs["state"] == "unreadable"
    # a trusted copy without its manifest is refused
    s3["manifest"] = None
    assert _errors("show", doc)


# --- drills ----------------------------------------------------------------------------------


def test_drills_document_carries_the_report_and_its_summary() -> None:
    report = DrillReport(
        drill_id="20261128T030000Z-ab12", domain="au", started_at=NOW,
        finished_at=NOW + timedelta(seconds=40), passed=False, sources=[
            SourceDrill(source="catalog", passed=True, backup_id=BACKUP_ID,
                        backup_created_at=WHEN, store="s3", rto_seconds=12.5,
                        rpo_seconds=36000.0, row_counts_expected={"public.items": 3},
                        row_counts_found={"public.items": 3},
                        check=CheckResult(sql="select 1", expected="1", found="1", passed=True),
                        scratch_database="rv_drill_catalog", scratch_dropped=True),
            SourceDrill(source="orders", passed=False, scratch_database="rv_drill_orders",
                        error="no verified backup")])
    doc = _valid("drills", drills_document([report], NOW))
    (drill,) = doc["drills"]
    assert (drill["max_rto_seconds"], drill["max_rpo_seconds"], drill["failed_sources"]) == \
        (12.5, 36000.0, ["orders"])
    assert drill["sources"][0]["check"]["passed"] is True
    drill["sources"][1]["passed"] = "no"
    assert _errors("drills", doc)


# --- check -----------------------------------------------------------------------------------


def test_check_entries_from_a_worker_answer_and_an_unreached_domain() -> None:
    answered = DomainCheck.from_dict(DomainCheck(
        "eu", ("domain eu: current keys: local eu-2026",), (), 0, keys_ok=True,
        sources=("accounts", "events"), stores=("s3", "gcs"), rules_ok=True).as_dict())
    unreached = DomainCheck("au", (), (), 4, error="its workers did not answer within 5s",
                            reached=False)
    doc = _valid("check", document("check", NOW, exit_code=4,
                                   domains=[answered.as_json(), unreached.as_json()]))
    eu, au = doc["domains"]
    assert eu["ok"] and eu["sources_checked"] == ["accounts", "events"] and eu["messages"]
    assert not au["reached"] and au["keys_ok"] is None and au["exit_code"] == 4


def test_a_check_answer_of_an_older_worker_still_reads() -> None:
    old = {"domain": "us", "out": ["domain us: ok"], "err": [], "exit_code": 0}
    entry = DomainCheck.from_dict(old).as_json()
    _valid("check", document("check", NOW, exit_code=0, domains=[entry]))
    assert entry["keys_ok"] is None and entry["messages"] == ["domain us: ok"]


def test_check_schema_refuses_an_entry_without_its_exit_code() -> None:
    entry = DomainCheck("eu", (), (), 0).as_json()
    del entry["exit_code"]
    assert _errors("check", document("check", NOW, exit_code=0, domains=[entry]))


# --- events ----------------------------------------------------------------------------------


def _chain_record(states: dict[Step, StepState], state: BackupState) -> BackupRecord:
    return BackupRecord(
        backup_id=BACKUP_ID, domain="eu", source="accounts", state=state,
        steps={s: JournalEntry(s, states.get(s, StepState.PENDING), detail="ok", at=NOW)
               for s in STEPS},
        created_at=NOW, updated_at=NOW)


def test_events_of_a_chain_validate() -> None:
    running = _chain_record({Step.DUMP: StepState.RUNNING}, BackupState.RUNNING)
    verified = _chain_record(dict.fromkeys(STEPS, StepState.DONE), BackupState.VERIFIED)
    events = [queued_event(BACKUP_ID, "eu", "accounts", "backup.eu", NOW),
              step_event(running, Step.DUMP, 4096, NOW),
              progress_event(BACKUP_ID, Step.DUMP, 8192, 2.0, NOW),
              step_event(verified, Step.EXPIRE, 0, NOW),
              end_event(BACKUP_ID, FollowResult(True, "verified"), NOW)]
    for event in events:
        _valid("event", event)
    assert [e["event"] for e in events] == ["queued", "step", "progress", "step", "end"]
    assert events[1]["bytes"] == 4096 and events[3]["bytes"] is None
    assert events[2]["bytes_per_second"] == 4096.0
    assert events[-1]["state"] == "verified" and events[-1]["verified"] is True
    failed = end_event(BACKUP_ID, FollowResult(False, "failed", Step.UPLOAD, "denied"), NOW)
    assert _valid("event", failed)["failed_step"] == "upload"


@pytest.mark.parametrize("change", [
    {"event": "finished"},                 # not an event type
    {"state": "pending"},                  # a step event never reports pending
    {"verified": "yes"},                   # on a step event: not one of its fields
])
def test_event_schema_refuses(change: dict[str, Any]) -> None:
    event = step_event(_chain_record({Step.DUMP: StepState.RUNNING}, BackupState.RUNNING),
                       Step.DUMP, 0, NOW)
    assert _errors("event", {**event, **change})
