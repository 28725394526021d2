"""The bucket backstops as pure policy: which lifecycle rules a bucket must hold
(``required_rules``), how what a bucket holds is read (``parse_*_rules``) and judged
(``compare``), what provision writes (``merge_*_rules``) and when it refuses (``refusal``)."""

from __future__ import annotations

from typing import Any

import pytest

from regionvault.config import PII_MAX_RETENTION_DAYS, Config, parse_config
from regionvault.domains import Domain
from regionvault.provision import (
    RULE_ABORT_UPLOADS,
    RULE_PII,
    RULE_PII_NONCURRENT,
    BucketRefused,
    Problem,
    compare,
    refusal,
    required_rules,
)
from regionvault.stores.lifecycle import (
    BucketState,
    Rule,
    RuleKind,
    merge_gcs_rules,
    merge_s3_rules,
    parse_gcs_rules,
    parse_s3_rules,
    s3_rule_body,
)

EU = Domain.EU
DAY = 86400


def config(pii_days: int = 29) -> Config:
    return parse_config({
        "retention": {"pii_days": pii_days},
        "domains": {"eu": {
            "aws_region": "eu-central-1", "s3_bucket": "rv-eu-primary",
            "gcp_location": "europe-west4", "gcs_bucket": "rv-eu-replica",
            "key": {"id": "eu-1", "secret": {"env": "UNUSED"}},
        }},
    }, origin="test", env={})


# --- required_rules --------------------------------------------------------------------------


# The backstop stays a day under the 29-day ceiling (the clouds act up to a day late), so
# pii_days 29 gives 28 days of rules; a shorter pii_days is taken as it is.
@pytest.mark.parametrize(("store", "versioned", "pii_days", "days", "expected"), [
    ("s3", False, 29, 28, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 28),
                           (RULE_ABORT_UPLOADS, RuleKind.ABORT_UPLOADS, "", 1)]),
    ("s3", False, 28, 28, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 28),
                           (RULE_ABORT_UPLOADS, RuleKind.ABORT_UPLOADS, "", 1)]),
    ("s3", False, 7, 7, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 7),
                         (RULE_ABORT_UPLOADS, RuleKind.ABORT_UPLOADS, "", 1)]),
    ("s3", True, 29, 28, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 27),
                          (RULE_PII_NONCURRENT, RuleKind.EXPIRE_NONCURRENT, "eu/pii/", 1),
                          (RULE_ABORT_UPLOADS, RuleKind.ABORT_UPLOADS, "", 1)]),
    ("gcs", False, 29, 28, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 28)]),
    ("gcs", True, 29, 28, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 27),
                           (RULE_PII_NONCURRENT, RuleKind.EXPIRE_NONCURRENT, "eu/pii/", 1)]),
    ("gcs", True, 2, 2, [(RULE_PII, RuleKind.EXPIRE, "eu/pii/", 1),
                         (RULE_PII_NONCURRENT, RuleKind.EXPIRE_NONCURRENT, "eu/pii/", 1)]),
])
def test_required_rules(store: str, versioned: bool, pii_days: int, days: int,
                        expected: list[tuple[str, RuleKind, str, int]]) -> None:
    required = required_rules(EU, config(pii_days), store, versioned=versioned)
    assert [(r.id, r.kind, r.prefix, r.days) for r in required.rules] == expected
    assert required.bucket == ("rv-eu-primary" if store == "s3" else "rv-eu-replica")
    assert required.ceiling_days == days


@pytest.mark.parametrize("pii_days", range(2, PII_MAX_RETENTION_DAYS + 1))
@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_a_versioned_bucket_keeps_a_version_no_longer_than_the_ceiling(
        store: str, pii_days: int) -> None:
    required = required_rules(EU, config(pii_days), store, versioned=True)
    current = required.rule(RuleKind.EXPIRE)
    noncurrent = required.rule(RuleKind.EXPIRE_NONCURRENT)
    assert current is not None and noncurrent is not None
    assert current.days >= 1 and noncurrent.days >= 1
    assert current.days + noncurrent.days == required.ceiling_days
    assert required.ceiling_days == min(pii_days, PII_MAX_RETENTION_DAYS - 1)


def test_a_versioned_bucket_with_one_day_of_retention_is_refused() -> None:
    with pytest.raises(BucketRefused, match=r"s3://rv-eu-primary is versioned and "
                                            r"retention\.pii_days is 1"):
        required_rules(EU, config(1), "s3", versioned=True)
    assert required_rules(EU, config(1), "s3").rule(RuleKind.EXPIRE) == Rule(
        RULE_PII, RuleKind.EXPIRE, "eu/pii/", 1)


# --- compare: S3 -----------------------------------------------------------------------------

OURS_S3 = [s3_rule_body(r) for r in required_rules(EU, config(), "s3").rules]
OURS_S3_VERSIONED = [s3_rule_body(r) for r in
                     required_rules(EU, config(), "s3", versioned=True).rules]
ABORT = s3_rule_body(Rule(RULE_ABORT_UPLOADS, RuleKind.ABORT_UPLOADS, "", 1))


def pii(days: int, prefix: str = "eu/pii/", rule_id: str = RULE_PII,
        **extra: Any) -> dict[str, Any]:
    return {"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": prefix},
            "Expiration": {"Days": days}, **extra}


def noncurrent(days: int, **extra: Any) -> dict[str, Any]:
    return {"ID": RULE_PII_NONCURRENT, "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": days, **extra}}


S3_CASES: dict[str, tuple[list[dict[str, Any]], bool, set[tuple[str, Problem]], str]] = {
    # name: (rules the bucket holds, versioned, expected findings, a phrase of the first)
    "as provisioned": (OURS_S3, False, set(), ""),
    "none at all": ([], False, {(RULE_PII, Problem.MISSING),
                                (RULE_ABORT_UPLOADS, Problem.MISSING)}, "no rule of the bucket"),
    # their own ids are fine, but 29 days is now a day more than the policy allows
    "the old dev-stack rules": ([
        {"ID": "pii-29-days", "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
         "Expiration": {"Days": 29}},
        {"ID": "abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}], False,
        {(RULE_PII, Problem.WEAKER)},
        "rule 'pii-29-days' acts after 29 days, the policy allows 28 days"),
    "the old dev-stack rules, 28 days": ([
        {"ID": "pii-28-days", "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
         "Expiration": {"Days": 28}},
        {"ID": "abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}], False, set(), ""),
    "stricter and broader": ([pii(20, "eu/", "mine"), ABORT], False, set(), ""),
    "legacy top-level prefix": ([{"ID": "old", "Status": "Enabled", "Prefix": "eu/pii/",
                                  "Expiration": {"Days": 28}}, ABORT], False, set(), ""),
    "40 days": ([pii(40), ABORT], False, {(RULE_PII, Problem.WEAKER)},
                "rule 'regionvault-pii-ceiling' acts after 40 days, the policy allows 28 days"),
    "disabled": ([{**pii(28), "Status": "Disabled"}, ABORT], False,
                 {(RULE_PII, Problem.MISSING)}, "rule 'regionvault-pii-ceiling' is disabled"),
    "wrong prefix": ([pii(28, "eu/pi/"), ABORT], False, {(RULE_PII, Problem.MISSING)},
                     "applies to 'eu/pi/', not to all of 'eu/pii/'"),
    "another domain's prefix": ([pii(28, "us/pii/"), ABORT], False,
                                {(RULE_PII, Problem.MISSING)}, "applies to 'us/pii/'"),
    "narrower prefix": ([pii(28, "eu/pii/accounts/"), ABORT], False,
                        {(RULE_PII, Problem.MISSING)}, "not to all of 'eu/pii/'"),
    "only tagged objects": ([{"ID": RULE_PII, "Status": "Enabled", "Filter": {"And": {
        "Prefix": "eu/pii/", "Tags": [{"Key": "k", "Value": "v"}]}},
        "Expiration": {"Days": 28}}, ABORT], False, {(RULE_PII, Problem.MISSING)},
        "applies only under further conditions (And)"),
    "expiry on a date": ([{"ID": RULE_PII, "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
                           "Expiration": {"Date": "2030-01-01T00:00:00Z"}}, ABORT], False,
                         {(RULE_PII, Problem.MISSING)}, "missing"),
    "uploads kept a week": ([pii(28), {**ABORT, "AbortIncompleteMultipartUpload": {
        "DaysAfterInitiation": 7}}], False, {(RULE_ABORT_UPLOADS, Problem.WEAKER)},
        "acts after 7 days, the policy allows 1 day"),
    "versioned, as provisioned": (OURS_S3_VERSIONED, True, set(), ""),
    "versioned, no noncurrent expiry": (OURS_S3, True, {(RULE_PII_NONCURRENT, Problem.MISSING)},
                                        "the bucket is versioned"),
    # what provision wrote on a versioned bucket before the backstop moved a day under the
    # ceiling: 28 + 1 is a day too many now
    "versioned, 28 + 1 days": ([pii(28), noncurrent(1), ABORT], True, {(RULE_PII, Problem.WEAKER)},
                               "keep a version under 'eu/pii/' up to 29 days, the policy allows "
                               "28 days"),
    "versioned, 20 + 5 days": ([pii(20), noncurrent(5), ABORT], True, set(), ""),
    "versioned, newest versions kept": ([pii(27), noncurrent(1, NewerNoncurrentVersions=3),
                                         ABORT], True, {(RULE_PII_NONCURRENT, Problem.MISSING)},
                                        "NewerNoncurrentVersions"),
    "versioned, 40 days and no noncurrent": ([pii(40), ABORT], True, {
        (RULE_PII, Problem.WEAKER), (RULE_PII_NONCURRENT, Problem.MISSING)}, ""),
}


@pytest.mark.parametrize("case", list(S3_CASES))
def test_compare_s3(case: str) -> None:
    raw, versioned, expected, phrase = S3_CASES[case]
    state = BucketState("s3", "rv-eu-primary", versioned, parse_s3_rules(raw))
    required = required_rules(EU, config(), "s3", versioned=versioned)
    findings = compare(required, state)
    assert {(f.rule, f.problem) for f in findings} == expected
    for finding in findings:
        assert finding.message.startswith("s3://rv-eu-primary: ")
        assert f"'{finding.rule}'" in finding.message
    if phrase:
        assert phrase in " | ".join(f.message for f in findings)


def test_mfa_delete_is_a_finding_and_refused() -> None:
    state = BucketState("s3", "rv-eu-primary", True, parse_s3_rules(OURS_S3_VERSIONED),
                        lifecycle_allowed=False)
    findings = compare(required_rules(EU, config(), "s3", versioned=True), state)
    assert [(f.rule, f.problem) for f in findings] == [("MFADelete", Problem.UNSUPPORTED)]
    assert refusal(29, state) == ("s3://rv-eu-primary has MFA delete enabled, and S3 accepts "
                                  "no lifecycle rules on such a bucket; disable MFA delete or "
                                  "use another bucket")


# --- compare: GCS ----------------------------------------------------------------------------


def delete(**condition: Any) -> dict[str, Any]:
    return {"action": {"type": "Delete"}, "condition": condition}


GCS_OURS = delete(age=28, matchesPrefix=["eu/pii/"])
GCS_NONCURRENT = delete(isLive=False, daysSinceNoncurrentTime=1, matchesPrefix=["eu/pii/"])

GCS_CASES: dict[str, tuple[list[dict[str, Any]], bool, int, int,
                           set[tuple[str, Problem]]]] = {
    # name: (rules, versioned, soft delete seconds, retention seconds, expected findings)
    "as provisioned": ([GCS_OURS], False, 0, 0, set()),
    "none": ([], False, 0, 0, {(RULE_PII, Problem.MISSING)}),
    "40 days": ([delete(age=40, matchesPrefix=["eu/pii/"])], False, 0, 0,
                {(RULE_PII, Problem.WEAKER)}),
    "several prefixes": ([delete(age=10, matchesPrefix=["tmp/", "eu/pii/"])], False, 0, 0,
                         set()),
    "whole bucket": ([delete(age=28)], False, 0, 0, set()),
    "whole bucket, 29 days": ([delete(age=29)], False, 0, 0, {(RULE_PII, Problem.WEAKER)}),
    "suffix too": ([delete(age=28, matchesPrefix=["eu/pii/"], matchesSuffix=[".rvb"])], False,
                   0, 0, {(RULE_PII, Problem.MISSING)}),
    "noncurrent only": ([delete(age=28, isLive=False, matchesPrefix=["eu/pii/"])], False, 0, 0,
                        {(RULE_PII, Problem.MISSING)}),
    "storage class rule only": ([{"action": {"type": "SetStorageClass",
                                             "storageClass": "NEARLINE"},
                                  "condition": {"age": 1}}], False, 0, 0,
                                {(RULE_PII, Problem.MISSING)}),
    "soft delete": ([GCS_OURS], False, 7 * DAY, 0, {("softDeletePolicy", Problem.SOFT_DELETE)}),
    "retention policy": ([GCS_OURS], False, 0, 90 * DAY,
                         {("retentionPolicy", Problem.UNSUPPORTED)}),
    "short retention policy": ([GCS_OURS], False, 0, 1 * DAY, set()),
    "versioned, as provisioned": ([delete(age=27, matchesPrefix=["eu/pii/"]), GCS_NONCURRENT],
                                  True, 0, 0, set()),
    "versioned, no noncurrent expiry": ([GCS_OURS], True, 0, 0,
                                        {(RULE_PII_NONCURRENT, Problem.MISSING)}),
    "versioned, 28 + 1": ([GCS_OURS, GCS_NONCURRENT], True, 0, 0, {(RULE_PII, Problem.WEAKER)}),
}


@pytest.mark.parametrize("case", list(GCS_CASES))
def test_compare_gcs(case: str) -> None:
    raw, versioned, soft_delete, retention, expected = GCS_CASES[case]
    state = BucketState("gcs", "rv-eu-replica", versioned, parse_gcs_rules(raw),
                        soft_delete_seconds=soft_delete, retention_seconds=retention)
    findings = compare(required_rules(EU, config(), "gcs", versioned=versioned), state)
    assert {(f.rule, f.problem) for f in findings} == expected
    assert all(f.message.startswith("gs://rv-eu-replica: ") for f in findings)


def test_a_weaker_gcs_rule_is_named() -> None:
    state = BucketState("gcs", "b", False, parse_gcs_rules(
        [GCS_OURS | {"condition": {"age": 40, "matchesPrefix": ["eu/pii/"]}}]))
    (finding,) = compare(required_rules(EU, config(), "gcs"), state)
    assert finding.message == (
        "gs://b: lifecycle rule 'regionvault-pii-ceiling' is weaker than the policy: Delete "
        "rule #1 (age 40, matchesPrefix ['eu/pii/']) acts after 40 days, the policy allows 28 "
        "days; run `regionvault provision --domain eu`")


def test_a_gcs_retention_policy_longer_than_the_ceiling_is_refused() -> None:
    state = BucketState("gcs", "b", False, (), retention_seconds=30 * DAY)
    assert refusal(29, state) == (
        "gs://b has a retention policy of 30 days, so personal data cannot be deleted within "
        "29 days; remove the retention policy or use another bucket")
    assert refusal(30, state) is None


# --- a day under the ceiling ---------------------------------------------------------------


# pii_days -> the days of the rule; a bucket still holding a rule one day longer (with
# pii_days 29: the 29-day rule provision wrote before the backstop moved a day under the
# ceiling) is weaker than the policy, named with the bucket, its rule and both numbers.
@pytest.mark.parametrize(("pii_days", "days"), [
    pytest.param(29, 28, id="29 days -> a 28-day rule"),
    pytest.param(10, 10, id="10 days -> a 10-day rule"),
])
@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_the_backstop_is_a_day_under_the_ceiling(store: str, pii_days: int, days: int) -> None:
    required = required_rules(EU, config(pii_days), store)
    assert required.rule(RuleKind.EXPIRE) == Rule(RULE_PII, RuleKind.EXPIRE, "eu/pii/", days)
    assert required.ceiling_days == days
    name = required.bucket
    if store == "s3":
        url, label = f"s3://{name}", "rule 'regionvault-pii-ceiling'"
        exact, longer = (parse_s3_rules([pii(n), ABORT]) for n in (days, days + 1))
    else:
        url, label = f"gs://{name}", f"Delete rule #1 (age {days + 1}, matchesPrefix ['eu/pii/'])"
        exact, longer = (parse_gcs_rules([delete(age=n, matchesPrefix=["eu/pii/"])])
                         for n in (days, days + 1))
    assert compare(required, BucketState(store, name, False, exact)) == []
    (finding,) = compare(required, BucketState(store, name, False, longer))
    assert (finding.rule, finding.problem) == (RULE_PII, Problem.WEAKER)
    assert finding.message == (
        f"{url}: lifecycle rule 'regionvault-pii-ceiling' is weaker than the policy: "
        f"{label} acts after {days + 1} days, the policy allows {days} days; "
        "run `regionvault provision --domain eu`")


# --- merging ---------------------------------------------------------------------------------


def test_merge_s3_keeps_other_rules_and_replaces_ours() -> None:
    logs = {"ID": "logs-90-days", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
            "Expiration": {"Days": 90}}
    legacy = {"ID": "pii-29-days", "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
              "Expiration": {"Days": 29}}
    existing = [pii(40), logs, noncurrent(9), legacy]
    rules = required_rules(EU, config(), "s3").rules
    merged = merge_s3_rules(existing, rules)
    assert merged == [logs, legacy, *(s3_rule_body(r) for r in rules)]
    assert merge_s3_rules(merged, rules) == merged


def test_merge_gcs_keeps_other_rules_and_replaces_ours() -> None:
    archive = {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
               "condition": {"age": 30, "matchesPrefix": ["eu/metadata/"]}}
    other_prefix = delete(age=40, matchesPrefix=["us/pii/"])
    narrower = delete(age=40, matchesPrefix=["eu/pii/"], matchesSuffix=[".tmp"])
    existing = [delete(age=40, matchesPrefix=["eu/pii/"]), archive, other_prefix, narrower,
                GCS_NONCURRENT]
    rules = required_rules(EU, config(), "gcs").rules
    merged = merge_gcs_rules(existing, rules, frozenset({"eu/pii/"}))
    assert merged == [archive, other_prefix, narrower, GCS_OURS]
    assert merge_gcs_rules(merged, rules, frozenset({"eu/pii/"})) == merged
