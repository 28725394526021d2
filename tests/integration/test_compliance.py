"""Issue 9, evidence for auditors, on the real stack: ``regionvault compliance --json`` after the
domain's expiry sweep and integrity sample ran on its real worker is compliant (exit 0) and
validates against its JSON Schema; judged 40 days later (``--now``) the pii backup just taken is
past its policy, because no sweep ran then, and the report exits 3 naming it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from regionvault.compliance import SCHEMA_ID, load_schema
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import BackupRef
from tests.integration.helpers import config_of, regionvault_cli, run_chain

pytestmark = pytest.mark.stack

DOMAIN = Domain.EU


def _compliance(stack: DevStack, *args: str) -> tuple[int, dict[str, Any], str]:
    result = regionvault_cli(stack, "compliance", "--domain", DOMAIN.value, "--json", *args)
    try:
        document = json.loads(result.stdout)  # stdout carries the JSON document only
    except ValueError:
        raise AssertionError(f"stdout is not JSON (exit {result.returncode}): "
                             f"{result.stdout!r}; stderr: {result.stderr}") from None
    validator = jsonschema.Draft202012Validator(load_schema(),
                                                format_checker=jsonschema.FormatChecker())
    validator.validate(document)
    return result.returncode, document, result.stderr


def test_compliance_after_the_loops_ran_then_forty_days_later(stack: DevStack) -> None:
    from tasks.expire_domain import expire_domain
    from tasks.integrity import integrity_sample

    # the buckets' backstops as the policy requires (another test may have just repaired them)
    assert regionvault_cli(stack, "provision", "--domain", DOMAIN.value).returncode == 0
    backup_id = run_chain(stack, DOMAIN, "accounts")
    swept = expire_domain.apply_async(kwargs={"domain": DOMAIN.value}).get(timeout=120)
    assert swept["complete"] is True, swept
    sampled = integrity_sample.apply_async(kwargs={"domain": DOMAIN.value}).get(timeout=300)
    assert sampled["mismatches"] == [] and sampled["store_errors"] == {}, sampled

    code, document, stderr = _compliance(stack)
    assert code == 0, json.dumps(document["domains"][0]["findings"], indent=2) + stderr
    assert document["schema"] == SCHEMA_ID and document["schema_version"] == 1
    assert document["compliant"] is True
    (report,) = document["domains"]
    assert report["domain"] == DOMAIN.value and report["findings"] == []
    dcfg = config_of(stack).domain(DOMAIN)
    for role, url in (("s3", f"s3://{dcfg.s3_bucket}"), ("gcs", f"gs://{dcfg.gcs_bucket}")):
        store = report["stores"][role]
        assert store["url"] == url and store["listed"] is True
        assert store["oldest_pii"] is not None and store["past_policy"] == []
        assert store["lifecycle"]["findings"] == [] and store["lifecycle"]["required"]
        assert store["versioned"] is False
        assert store["expiry_sweep"]["recent"] is True
        assert store["integrity_sample"]["recent"] is True
        assert store["key_ids"] and all(k["held"] for k in store["key_ids"])

    # 40 days on: the backup is past the 29-day ceiling, and no sweep ran in between
    later = datetime.now(UTC) + timedelta(days=40)
    code, document, stderr = _compliance(stack, "--now", later.isoformat())
    assert code == 3, stderr
    assert document["compliant"] is False
    (report,) = document["domains"]
    assert f"domain {DOMAIN.value} is not compliant" in stderr
    ref = BackupRef.parse(backup_id)
    okey = f"{DOMAIN.value}/pii/{ref.source}/{backup_id}.rvb"
    for role in ("s3", "gcs"):
        past = report["stores"][role]["past_policy"]
        assert okey in [o["key"] for o in past], past
        assert next(o for o in past if o["key"] == okey)["rule"] == "pii"
    named = [f for f in report["findings"] if f["condition"] == "past-policy"
             and f["subject"] == okey]
    assert {f["store"] for f in named} == {"s3", "gcs"}
    assert all("is past its policy" in f["message"] for f in named)
    blocked = {(f["condition"], f["store"]) for f in report["findings"]}
    assert {("expiry-sweep", "s3"), ("expiry-sweep", "gcs")} <= blocked


def test_compliance_refuses_bad_input(stack: DevStack) -> None:
    result = regionvault_cli(stack, "compliance", "--domain", "mars", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert "mars" in result.stderr
    result = regionvault_cli(stack, "compliance", "--domain", "eu", "--now", "yesterday")
    assert result.returncode == 2 and "--now 'yesterday'" in result.stderr
