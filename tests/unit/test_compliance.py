"""The compliance report over in-memory stores and ledgers: what makes a domain compliant, and
a finding naming the store and the thing for each way it is not.

The stores carry their own clock (``MemoryStore(clock=...)`` stamps ``modified``). Memory
stores have no lifecycle configuration: each test passes the buckets' rules through the
report's ``rules`` seam (a fake ``BucketRulesReader``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from regionvault import chain, manifest_store
from regionvault import context as context_module
from regionvault.compliance import (
    DEFAULT_INTEGRITY_MAX_AGE,
    SCHEMA_ID,
    BucketRulesReader,
    ComplianceReport,
    compliance_document,
    compliance_report,
    load_schema,
)
from regionvault.config import Config, SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import TransientStoreError
from regionvault.expiry import MemorySweepLedger, record_sweep, run_sweep, sweep_domain
from regionvault.integrity import MemoryReadLedger, run_sample
from regionvault.keyring import Keyring
from regionvault.manifest import BackupRef, parse_manifest
from regionvault.provision import RULE_ABORT_UPLOADS, RULE_PII, required_rules
from regionvault.stores.lifecycle import BucketState, FoundRule, RuleKind
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data
from tests.unit.test_chain import KEY_ID, T0, Clock, FakeSource, GCSRole, S3Role

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: the default pii cutoff: 29 days less a 1 h sweep interval and a 1 h deletion allowance
CUTOFF = 29 * DAY - 2 * HOUR


@dataclass
class FakeBucket:
    """A bucket's lifecycle configuration as ``BucketRulesReader`` reads it."""

    store: str
    bucket: str
    state: BucketState | None = None
    error: Exception | None = None

    def read(self) -> BucketState:
        if self.error is not None:
            raise self.error
        assert self.state is not None
        return self.state


def buckets(config: Config, *, drop: Iterable[tuple[str, str]] = (),
            versioned: bool = False) -> dict[str, FakeBucket]:
    """Both buckets holding exactly what provision writes, less the (store, rule id) dropped."""
    dropped = set(drop)
    found = {}
    for store in ("s3", "gcs"):
        required = required_rules(Domain.EU, config, store, versioned=versioned)
        rules = tuple(FoundRule(label=f"rule '{r.id}'", kind=r.kind, prefixes=(r.prefix,),
                                days=r.days, id=r.id)
                      for r in required.rules if (store, r.id) not in dropped)
        found[store] = FakeBucket(store, required.bucket,
                                  BucketState(store, required.bucket, versioned, rules))
    return found


@dataclass
class Rig:
    ctx: DomainContext
    s3: MemoryStore
    gcs: MemoryStore
    #: the workers' clock (manifests' created_at) and the stores' clock (their ``modified``)
    clock: Clock
    store_clock: Clock
    sweeps: MemorySweepLedger
    reads: MemoryReadLedger
    rules: dict[str, FakeBucket]

    def at(self, when: datetime) -> None:
        self.clock.now = self.store_clock.now = when

    def backup(self, when: datetime, source: str = "accounts") -> str:
        """A verified backup whose chain ran at ``when``."""
        self.at(when)
        backup_id = chain.new_backup(self.ctx, source)
        for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
            step(self.ctx, backup_id)
        chain.verify(self.ctx, backup_id, deep=True)
        return backup_id

    def keys(self, backup_id: str) -> tuple[str, str]:
        ref = BackupRef.parse(backup_id)
        cls = self.ctx.config.source(Domain.EU, ref.source).data_class.value
        stem = f"eu/{cls}/{ref.source}/{backup_id}"
        return stem + ".rvb", stem + ".manifest.json"

    def loops(self, when: datetime) -> None:
        """The expiry sweep and the integrity sample run at ``when`` and are recorded."""
        self.at(when)
        run_sweep(self.ctx, self.sweeps, when)
        run_sample(self.ctx, self.reads, when)

    def report(self, when: datetime, *,
               integrity_max_age: timedelta = DEFAULT_INTEGRITY_MAX_AGE) -> ComplianceReport:
        self.at(when)
        rules: dict[str, BucketRulesReader] = dict(self.rules)
        return compliance_report(self.ctx, expiry_ledger=self.sweeps,
                                 integrity_ledger=self.reads, now=when, rules=rules,
                                 integrity_max_age=integrity_max_age)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    config = parse_config(data, origin="test", env={})
    clock, store_clock = Clock(T0), Clock(T0)
    s3 = S3Role("rv-eu-primary", "eu-central-1", clock=store_clock)
    gcs = GCSRole("rv-eu-replica", "europe-west4", clock=store_clock)
    keyring = Keyring.local_only(Domain.EU, {KEY_ID: os.urandom(32)}, current=KEY_ID)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs, keyring=keyring)

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        return FakeSource(name=src.name, between=lambda: None)

    monkeypatch.setattr(chain, "open_source", open_source)
    return Rig(ctx, s3, gcs, clock, store_clock, MemorySweepLedger(), MemoryReadLedger(),
               buckets(config))


def conditions(report: ComplianceReport) -> list[tuple[str, str | None]]:
    return [(f.condition.value, f.store) for f in report.findings]


def validate(report: ComplianceReport) -> dict[str, object]:
    document = compliance_document([report], generated_at=report.as_of)
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
        json.loads(json.dumps(document)))
    return document


# --- compliant -----------------------------------------------------------------------------------


def test_a_domain_swept_sampled_and_within_policy_is_compliant(rig: Rig) -> None:
    pii = rig.backup(T0)
    rig.backup(T0, source="catalog")
    rig.loops(T0 + HOUR)

    report = rig.report(T0 + 2 * HOUR)

    assert report.findings == () and report.compliant, [str(f) for f in report.findings]
    for role in ("s3", "gcs"):
        store = report.stores[role]
        assert store.listed and store.backups == 2
        assert store.oldest_pii is not None
        assert store.oldest_pii.key == rig.keys(pii)[0]
        assert store.oldest_pii.backup_id == pii
        assert store.oldest_pii.age == 2 * HOUR
        assert store.past_policy == store.due == ()
        assert store.rules.read and store.rules.versioned is False and store.rules.findings == ()
        assert {r.id for r in store.rules.required} == {f.id for f in store.rules.found}
        assert store.sweep.last_complete_at == T0 + HOUR and store.sweep.recent
        assert store.integrity_sampled_at == T0 + HOUR and store.integrity_recent
        assert [(k.key_id, k.held, k.uses, k.backups) for k in store.key_ids] == [
            (KEY_ID, True, ("data-key", "manifest-mac"), 2)]
        assert store.quarantined == ()

    document = validate(report)
    assert document["schema"] == SCHEMA_ID and document["compliant"] is True


# --- past its policy -----------------------------------------------------------------------------


def test_one_pii_object_over_age_is_named_in_each_store(rig: Rig) -> None:
    pii = rig.backup(T0)
    metadata = rig.backup(T0, source="catalog")
    later = T0 + 30 * DAY
    # the sweep is blocked: its ledger says it ran, but nothing was removed
    for role in ("s3", "gcs"):
        rig.sweeps.record_sweep("eu", role, later - HOUR)
    rig.reads.record_sample("eu", {"at": (later - HOUR).isoformat(), "complete": "yes"})

    report = rig.report(later)

    assert not report.compliant
    assert conditions(report) == [("past-policy", "s3"), ("past-policy", "gcs")]
    okey = rig.keys(pii)[0]
    for role, url in (("s3", "s3://rv-eu-primary"), ("gcs", "gs://rv-eu-replica")):
        store = report.stores[role]
        assert [o.key for o in store.past_policy] == [okey]
        assert store.past_policy[0].backup_id == pii and store.past_policy[0].rule == "pii"
        assert store.oldest_pii is not None and store.oldest_pii.age == 30 * DAY
        finding = next(f for f in report.findings if f.store == role)
        assert finding.subject == okey
        assert finding.message.startswith(f"{url}: {okey} is past its policy (pii, older than")
        assert "30 days old" in finding.message
        # the metadata backup is within its 365 days
        assert metadata not in str(store.past_policy)
    document = validate(report)
    assert document["compliant"] is False


def test_past_the_cutoff_within_the_sweep_margin_is_due_not_a_finding(rig: Rig) -> None:
    pii = rig.backup(T0)
    when = T0 + CUTOFF + 30 * 60 * timedelta(seconds=1)  # the next hourly sweep removes it
    for role in ("s3", "gcs"):
        rig.sweeps.record_sweep("eu", role, T0 + CUTOFF - 30 * timedelta(minutes=1))
    rig.reads.record_sample("eu", {"at": when.isoformat(), "complete": "yes"})

    report = rig.report(when)

    assert report.compliant, [str(f) for f in report.findings]
    assert [o.backup_id for o in report.stores["s3"].due] == [pii]
    assert report.stores["s3"].past_policy == ()
    # once the margin has passed too, it is past its policy (the 29-day ceiling itself)
    late = rig.report(T0 + 29 * DAY)
    assert ("past-policy", "s3") in conditions(late)


# --- lifecycle rules -----------------------------------------------------------------------------


def test_a_missing_lifecycle_rule_is_named_with_its_bucket(rig: Rig) -> None:
    rig.backup(T0)
    rig.loops(T0 + HOUR)
    rig.rules = buckets(rig.ctx.config, drop=[("s3", RULE_PII)])

    report = rig.report(T0 + 2 * HOUR)

    assert conditions(report) == [("lifecycle-rules", "s3")]
    message = report.findings[0].message
    assert message.startswith(f"s3://rv-eu-primary: lifecycle rule '{RULE_PII}' is missing")
    s3 = report.stores["s3"]
    assert RULE_PII in {r.id for r in s3.rules.required}
    assert {f.id for f in s3.rules.found} == {RULE_ABORT_UPLOADS}
    assert report.stores["gcs"].rules.findings == ()
    validate(report)


def test_a_rule_of_29_days_is_weaker_than_the_policy(rig: Rig) -> None:
    # What provision wrote before the rule moved a day under the ceiling (the clouds act up to
    # a day late): the report requires 28 days and names the 29-day rule.
    rig.loops(T0)
    rule = FoundRule(label=f"rule '{RULE_PII}'", kind=RuleKind.EXPIRE, prefixes=("eu/pii/",),
                     days=29, id=RULE_PII)
    rig.rules["gcs"] = FakeBucket("gcs", "rv-eu-replica", BucketState(
        "gcs", "rv-eu-replica", False, (rule,)))

    report = rig.report(T0 + HOUR)

    assert conditions(report) == [("lifecycle-rules", "gcs")]
    assert report.findings[0].message == (
        f"gs://rv-eu-replica: lifecycle rule '{RULE_PII}' is weaker than the policy: rule "
        f"'{RULE_PII}' acts after 29 days, the policy allows 28 days; run `regionvault "
        "provision --domain eu`")
    assert [(r.id, r.days) for r in report.stores["gcs"].rules.required] == [(RULE_PII, 28)]
    validate(report)


def test_lifecycle_rules_that_cannot_be_read_are_a_finding(rig: Rig) -> None:
    rig.loops(T0)
    rig.rules["gcs"].error = TransientStoreError("gs://rv-eu-replica: 503 from the store")

    report = rig.report(T0 + HOUR)

    assert conditions(report) == [("lifecycle-rules", "gcs")]
    assert "gs://rv-eu-replica: its lifecycle rules cannot be read" in report.findings[0].message
    assert report.stores["gcs"].rules.versioned is None
    validate(report)


def test_versioning_is_reported_and_judged_by_the_versioned_rules(rig: Rig) -> None:
    rig.loops(T0)
    rig.rules = buckets(rig.ctx.config, versioned=True)
    assert rig.report(T0 + HOUR).compliant
    # a versioned bucket holding only the unversioned rules lacks the noncurrent expiry
    unversioned = buckets(rig.ctx.config)["s3"]
    assert unversioned.state is not None
    rig.rules["s3"] = FakeBucket("s3", "rv-eu-primary", BucketState(
        "s3", "rv-eu-primary", True, unversioned.state.rules))
    report = rig.report(T0 + HOUR)
    assert report.stores["s3"].rules.versioned is True
    assert conditions(report) == [("lifecycle-rules", "s3")]
    assert "regionvault-pii-noncurrent" in report.findings[0].message


# --- keys and manifests --------------------------------------------------------------------------


def test_a_key_id_in_use_that_the_keyring_does_not_hold_is_named(rig: Rig) -> None:
    backup_id = rig.backup(T0)
    # a manifest signed by the current key whose data key is wrapped by a key since dropped
    # from the configuration (a rotation that removed previous_keys too early)
    _, mkey = rig.keys(backup_id)
    manifest = parse_manifest(rig.ctx, rig.s3.get_bytes(mkey), mkey, key=mkey)
    manifest_store.write_manifest(rig.ctx, rig.s3, mkey,
                                  manifest.model_copy(update={"wrappings": (
                                      manifest.wrappings[0].model_copy(
                                          update={"key_id": "eu-2019"}),)}))
    rig.loops(T0 + HOUR)

    report = rig.report(T0 + 2 * HOUR)

    assert conditions(report) == [("key-not-held", "s3")]
    finding = report.findings[0]
    assert finding.subject == "eu-2019"
    assert finding.message == (
        "s3://rv-eu-primary: 1 backup uses key 'eu-2019' (data-key), which the keyring of "
        "domain eu does not hold; put it back in the keyring (previous_keys, or the keyring "
        "file), or, if another wrapping still opens it, run 'regionvault keys rewrap'")
    held = {k.key_id: k.held for k in report.stores["s3"].key_ids}
    assert held == {"eu-2019": False, KEY_ID: True}
    assert {k.key_id for k in report.stores["gcs"].key_ids} == {KEY_ID}
    validate(report)


def test_a_forged_manifest_is_quarantined_and_a_finding(rig: Rig) -> None:
    backup_id = rig.backup(T0)
    _, mkey = rig.keys(backup_id)
    data = json.loads(rig.gcs.get_bytes(mkey))
    data["created_at"] = (T0 + 20 * DAY).isoformat()  # younger on paper, kept longer
    rig.gcs.put_bytes(mkey, json.dumps(data).encode())
    rig.loops(T0 + HOUR)

    report = rig.report(T0 + 2 * HOUR)

    assert conditions(report) == [("manifest-untrusted", "gcs")]
    finding = report.findings[0]
    assert finding.subject == mkey
    assert finding.message.startswith(f"gs://rv-eu-replica: manifest {mkey} is quarantined")
    assert "fails its MAC" in finding.message
    gcs = report.stores["gcs"]
    assert [(q.key, q.backup_id) for q in gcs.quarantined] == [(mkey, backup_id)]
    assert gcs.key_ids == ()  # nothing inside a forged manifest is believed
    assert gcs.oldest_pii is not None and gcs.oldest_pii.quarantined
    assert report.stores["s3"].quarantined == ()
    document = validate(report)
    quarantined = document["domains"][0]["stores"]["gcs"]["quarantined"]  # type: ignore[index]
    assert quarantined[0]["manifest"] is True


# --- the loops' records --------------------------------------------------------------------------


def test_no_recent_sweep_is_a_finding_per_store(rig: Rig) -> None:
    rig.backup(T0)
    rig.at(T0)
    run_sample(rig.ctx, rig.reads, T0)

    never = rig.report(T0 + HOUR)
    assert conditions(never) == [("expiry-sweep", "s3"), ("expiry-sweep", "gcs")]
    assert never.findings[0].message == (
        "s3://rv-eu-primary: no complete expiry sweep of it is recorded; "
        "regionvault.expire_domain of domain eu must run every 1 h")

    # S3 down at the last sweeps: GCS was swept, S3 was not
    rig.at(T0)
    record_sweep(rig.sweeps, sweep_domain(rig.ctx, T0))
    rig.s3.exists = False
    rig.at(T0 + 2 * HOUR)
    record_sweep(rig.sweeps, sweep_domain(rig.ctx, T0 + 2 * HOUR))
    rig.s3.exists = True
    report = rig.report(T0 + 3 * HOUR)
    assert conditions(report) == [("expiry-sweep", "s3")]
    message = report.findings[0].message
    assert message.startswith(f"s3://rv-eu-primary: its last complete expiry sweep was at "
                              f"{T0.isoformat()}, 3 h ago, more than twice the sweep interval "
                              "of 1 h; the last sweep")
    assert report.stores["gcs"].sweep.last_complete_at == T0 + 2 * HOUR
    validate(report)


def test_the_integrity_sample_must_be_recent_with_a_configurable_threshold(rig: Rig) -> None:
    rig.backup(T0)
    rig.loops(T0)
    when = T0 + 3 * DAY
    for role in ("s3", "gcs"):
        rig.sweeps.record_sweep("eu", role, when)

    report = rig.report(when)
    assert conditions(report) == [("integrity-sample", "s3"), ("integrity-sample", "gcs")]
    assert report.findings[0].message == (
        f"s3://rv-eu-primary: its last integrity sample was at {T0.isoformat()}, 3 days ago; "
        "regionvault.integrity_sample of domain eu must read it within 2 days")
    assert rig.report(when, integrity_max_age=4 * DAY).compliant


def test_a_sample_that_did_not_reach_a_store_or_found_rot_is_a_finding(rig: Rig) -> None:
    rig.loops(T0)
    rig.reads.record_sample("eu", {"at": T0.isoformat(), "complete": "no", "mismatches": "1",
                                   "store_errors": "gcs: gs://rv-eu-replica cannot be listed"})
    report = rig.report(T0 + HOUR)
    assert conditions(report) == [("integrity-sample", "gcs"), ("integrity-sample", None)]
    assert report.findings[0].message.startswith(
        "gs://rv-eu-replica: no integrity sample that read it is recorded")
    assert "found 1 stored copy that does not match its manifest" in report.findings[1].message
    validate(report)


def test_a_store_that_cannot_be_listed_does_not_stop_the_other(rig: Rig) -> None:
    pii = rig.backup(T0)
    rig.loops(T0)
    rig.gcs.exists = False

    report = rig.report(T0 + HOUR)

    assert ("store-unreadable", "gcs") in conditions(report)
    assert not report.stores["gcs"].listed
    assert "gs://rv-eu-replica cannot be listed" in report.stores["gcs"].errors[0]
    s3 = report.stores["s3"]
    assert s3.listed and s3.oldest_pii is not None and s3.oldest_pii.backup_id == pii
    validate(report)
