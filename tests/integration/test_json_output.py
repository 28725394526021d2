"""``--json`` on the real stack: every command that has it prints JSON and nothing else on
stdout, valid against its shipped schema, with the content the table shows; its exit code is
the table's; an error keeps its exit code and its sentence goes to stderr.

``backup --wait --json`` and ``watch --json`` print one event per line: a ``step`` event per
step transition, in chain order, ending with an ``end`` event that says verified.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import jsonschema
import pytest

from regionvault.devstack.stack import DevStack
from regionvault.documents import load_schema, schema_id
from regionvault.domains import Domain
from tests.integration.helpers import STEPS, config_of, context, regionvault_cli, run_chain
from tests.integration.test_secret_isolation import domain_secrets

pytestmark = pytest.mark.stack

DOMAIN = Domain.EU
SOURCE = "accounts"


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(kind),
                                           format_checker=jsonschema.FormatChecker())


def _document(kind: str, result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """stdout as the one JSON document of ``kind`` (nothing else may be there), validated."""
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"stdout is not one JSON document (exit {result.returncode}): "
                             f"{result.stdout!r}; stderr: {result.stderr}") from None
    _validator(kind).validate(doc)
    assert doc["schema"] == schema_id(kind) and doc["schema_version"] == 1
    return doc


def _events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """stdout as newline-delimited events: every line one JSON event, validated."""
    validator = _validator("event")
    events = []
    for line in result.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"a line of stdout is not JSON: {line!r}; stderr: "
                                 f"{result.stderr}") from None
        validator.validate(event)
        events.append(event)
    assert events, f"no events (exit {result.returncode}); stderr: {result.stderr}"
    return events


def _steps_done_in_order(events: list[dict[str, Any]], backup_id: str) -> None:
    done = [e["step"] for e in events if e["event"] == "step" and e["state"] == "done"
            and e["backup_id"] == backup_id]
    assert list(dict.fromkeys(done)) == [s.value for s in STEPS], done
    assert all(e["backup_id"] == backup_id for e in events)
    end = events[-1]
    assert (end["event"], end["state"], end["verified"]) == ("end", "verified", True), end


@pytest.fixture(scope="module")
def verified_backup(stack: DevStack) -> str:
    """A backup made by ``backup --wait --json``; its events are checked here."""
    result = regionvault_cli(stack, "backup", "--domain", DOMAIN.value, "--source", SOURCE,
                             "--wait", "--json", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    events = _events(result)
    queued = events[0]
    assert (queued["event"], queued["domain"], queued["source"], queued["queue"]) == \
        ("queued", DOMAIN.value, SOURCE, f"backup.{DOMAIN.value}")
    backup_id = str(queued["backup_id"])
    _steps_done_in_order(events[1:], backup_id)
    assert sum(e["event"] == "end" for e in events) == 1
    return backup_id


def test_backup_wait_json_tells_each_step_in_order_and_ends_verified(
        verified_backup: str) -> None:
    assert verified_backup.startswith(f"{DOMAIN.value}.{SOURCE}.")


def test_watch_json_of_a_finished_backup(stack: DevStack, verified_backup: str) -> None:
    result = regionvault_cli(stack, "watch", verified_backup, "--json", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    _steps_done_in_order(_events(result), verified_backup)


def test_watch_json_of_a_running_backup(stack: DevStack) -> None:
    started = regionvault_cli(stack, "backup", "--domain", DOMAIN.value, "--source", "catalog",
                              "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    (queued,) = _events(started)  # without --wait: the queued event alone, the hint on stderr
    assert queued["event"] == "queued" and "regionvault watch" in started.stderr
    backup_id = queued["backup_id"]
    result = regionvault_cli(stack, "watch", backup_id, "--json", "--timeout", "240",
                             timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    _steps_done_in_order(_events(result), backup_id)


def test_list_json_has_the_backup_verified(stack: DevStack, verified_backup: str) -> None:
    result = regionvault_cli(stack, "list", "--domain", DOMAIN.value, "--source", SOURCE,
                             "--json")
    assert result.returncode == 0, result.stderr
    doc = _document("list", result)
    entry = next(b for b in doc["backups"] if b["backup_id"] == verified_backup)
    assert (entry["domain"], entry["source"], entry["state"]) == (DOMAIN.value, SOURCE,
                                                                  "verified")
    assert entry["ciphertext_size"] > 0 and entry["plaintext_size"] > 0
    assert doc["untrusted"] == []
    # the table lists the same backups
    table = regionvault_cli(stack, "list", "--domain", DOMAIN.value, "--source", SOURCE)
    assert table.returncode == 0
    assert all(b["backup_id"] in table.stdout for b in doc["backups"])


def test_show_json_has_the_manifest_per_store(stack: DevStack, verified_backup: str) -> None:
    result = regionvault_cli(stack, "show", verified_backup, "--json")
    assert result.returncode == 0, result.stderr
    doc = _document("show", result)
    dctx = context(stack, DOMAIN)
    placement = dctx.placement(config_of(stack).source(DOMAIN, SOURCE))
    assert set(doc["copies"]) == {placement.primary, placement.replica}
    for store, copy in doc["copies"].items():
        assert copy["trusted"] and copy["state"] == "verified", (store, copy)
        manifest = copy["manifest"]
        assert manifest["backup_id"] == verified_backup and manifest["source"] == SOURCE
        assert set(manifest["steps"]) >= {"dump", "encrypt", "upload", "verify"}
        assert all("blob" not in w for w in manifest["wrappings"])


def test_show_json_of_an_unknown_backup_keeps_its_exit_code(stack: DevStack) -> None:
    unknown = f"{DOMAIN.value}.{SOURCE}.20200101T000000Z.00000000"
    table = regionvault_cli(stack, "show", unknown)
    result = regionvault_cli(stack, "show", unknown, "--json")
    assert result.returncode == table.returncode != 0
    assert result.stdout == ""
    assert unknown in result.stderr and "no manifest" in result.stderr
    bad = regionvault_cli(stack, "show", "not-a-backup-id", "--json")
    assert bad.returncode == 2 and bad.stdout == "" and "is not a backup id" in bad.stderr


def test_status_json_names_each_source(stack: DevStack, verified_backup: str) -> None:
    result = regionvault_cli(stack, "status", "--domain", DOMAIN.value, "--json")
    doc = _document("status", result)
    assert result.returncode == doc["exit_code"], result.stderr
    configured = [s.name for s in config_of(stack).domain(DOMAIN).sources]
    assert [r["source"] for r in doc["rows"]] == configured
    row = next(r for r in doc["rows"] if r["source"] == SOURCE)
    assert row["freshness"] == "fresh" and row["exit_code"] == 0
    assert row["last_verified_id"] is not None and row["age_seconds"] >= 0
    assert row["last_verified_id"] >= verified_backup  # ids sort by time
    table = regionvault_cli(stack, "status", "--domain", DOMAIN.value)
    assert table.returncode == result.returncode


def test_check_json_has_one_entry_per_domain_and_no_secret(stack: DevStack) -> None:
    assert regionvault_cli(stack, "provision").returncode == 0  # rules another test may undo
    result = regionvault_cli(stack, "check", "--json", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = _document("check", result)
    cfg = config_of(stack)
    assert [e["domain"] for e in doc["domains"]] == [d.value for d in cfg.domains]
    for entry in doc["domains"]:
        d = Domain(entry["domain"])
        assert entry["exit_code"] == 0 and entry["ok"] and entry["reached"], entry
        assert entry["keys_ok"] is True and entry["rules_ok"] is True
        assert entry["sources_checked"] == [s.name for s in cfg.domain(d).sources]
        assert set(entry["stores_checked"]) >= {"s3", "gcs"}
        assert entry["messages"] and entry["findings"] == [] and entry["error"] is None
    for secrets in domain_secrets(stack).values():
        for value, what in secrets.values.items():
            text = value.decode("utf-8", errors="ignore")
            assert len(text) < 8 or text not in result.stdout, f"{what} is in check --json"


def test_check_json_local_of_one_domain(stack: DevStack) -> None:
    result = regionvault_cli(stack, "check", "--domain", DOMAIN.value, "--local", "--json")
    table = regionvault_cli(stack, "check", "--domain", DOMAIN.value, "--local")
    assert result.returncode == table.returncode, result.stderr
    (entry,) = _document("check", result)["domains"]
    assert entry["domain"] == DOMAIN.value and entry["exit_code"] == result.returncode
    assert entry["messages"] == [line for line in table.stdout.splitlines() if line]


def test_drills_json_shows_the_drill_just_run(stack: DevStack) -> None:
    backup_id = run_chain(stack, Domain.AU, "catalog")
    drill = regionvault_cli(stack, "drill", "--domain", "au", "--source", "catalog",
                            timeout=300)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    result = regionvault_cli(stack, "drills", "--domain", "au", "--json")
    assert result.returncode == 0, result.stderr
    doc = _document("drills", result)
    newest = doc["drills"][0]
    assert newest["drill_id"] in drill.stdout
    assert newest["domain"] == "au" and newest["passed"] and newest["failed_sources"] == []
    (source,) = newest["sources"]
    assert source["source"] == "catalog" and source["passed"]
    assert source["rto_seconds"] > 0 and source["backup_id"] == backup_id
    assert newest["max_rto_seconds"] == source["rto_seconds"]


def test_compliance_json_still_follows_its_schema(stack: DevStack) -> None:
    result = regionvault_cli(stack, "compliance", "--domain", DOMAIN.value, "--json")
    assert result.returncode in (0, 3), result.stderr
    assert _document("compliance", result)["domains"][0]["domain"] == DOMAIN.value
