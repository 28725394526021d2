"""The bucket backstops on real servers: ``provision`` and ``check`` against moto's S3 server
and the GCS emulator, in-process and through the ``regionvault`` command.

gcp-storage-emulator stores a bucket's lifecycle rules, versioning and soft delete policy as it
is given them but neither validates nor enforces them. So the GCS tests also capture, through a
small recording HTTP proxy in front of the emulator, the PATCH body the tool really sends, and
validate it against tests/schemas/gcs_bucket_lifecycle.json (written from Google's discovery
document of the Bucket resource).

Object lock (a domain with ``object_lock``): provision creates a missing bucket able to lock
objects, or enables Object Lock on an existing S3 bucket, and ``check`` reports it. moto holds
and enforces S3 Object Lock. The GCS emulator ignores object retention, so the recording proxy
also keeps the bucket inserts (validated against tests/schemas/gcs_object_retention.json) and,
for a bucket created with ``enableObjectRetention``, does what GCS does and the emulator does
not: keeps the location asked for and reports ``objectRetention`` (see tests/schemas/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest
import requests
import yaml

from regionvault.config import Config, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.keyring import generate_domain_key
from regionvault.provision import (
    LOCK_SETTING,
    RULE_ABORT_UPLOADS,
    RULE_NONCURRENT,
    RULE_PII,
    RULE_PII_NONCURRENT,
    Problem,
    check_locks,
    check_rules,
    provision,
)
from regionvault.stores.lifecycle import GCSLifecycle, S3Lifecycle

from .conftest import GCS_LOCATION, GCS_PROJECT, S3_REGION, ServerProcess, new_bucket_name

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "schemas" / "gcs_bucket_lifecycle.json").read_text())
RETENTION_SCHEMA = json.loads(
    (Path(__file__).parents[1] / "schemas" / "gcs_object_retention.json").read_text())
EU = Domain.EU
_BIN = Path(sys.executable).parent


# --- a recording proxy in front of the GCS emulator ------------------------------------------


@dataclass
class Recorder:
    """An HTTP proxy that forwards every request to the emulator and keeps the bucket PATCHes."""

    upstream: str
    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: bucket inserts: {"query": {...}, "body": {...}}
    inserts: list[dict[str, Any]] = field(default_factory=list)
    #: buckets created with enableObjectRetention (the shim reports objectRetention for them)
    retention_buckets: set[str] = field(default_factory=set)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def patches_of(self, bucket: str) -> list[dict[str, Any]]:
        return [body for path, body in self.patches if path.split("?")[0].endswith(f"/b/{bucket}")]

    def inserts_of(self, bucket: str) -> list[dict[str, Any]]:
        return [i for i in self.inserts if i["body"].get("name") == bucket]


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "PATCH" and "/b/" in self.path and "/o" not in self.path:
                recorder.patches.append((self.path, json.loads(body or b"{}")))
            path = urlsplit(self.path).path
            insert = self.command == "POST" and path.rstrip("/").endswith("/storage/v1/b")
            if insert:
                recorder.inserts.append({"query": dict(parse_qsl(urlsplit(self.path).query)),
                                         "body": json.loads(body or b"{}")})
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "content-length", "connection")}
            response = requests.request(self.command, recorder.upstream + self.path,
                                        data=body, headers=headers, timeout=30)
            content = response.content
            if insert and response.ok and recorder.inserts[-1]["query"].get(
                    "enableObjectRetention", "").lower() == "true":
                # GCS keeps the location asked for and enables object retention; the emulator
                # does neither (tests/schemas/README.md), so the shim does it here.
                name, location = recorder.inserts[-1]["body"]["name"], \
                    recorder.inserts[-1]["body"].get("location", "US")
                requests.patch(f"{recorder.upstream}/storage/v1/b/{name}",
                               json={"location": location.upper()}, timeout=30)
                recorder.retention_buckets.add(name)
            bucket = path.split("/b/")[-1] if "/b/" in path and "/o" not in path else None
            if bucket in recorder.retention_buckets and response.ok and content:
                resource = json.loads(content)
                resource["objectRetention"] = {"mode": "Enabled"}
                content = json.dumps(resource).encode()
            self.send_response(response.status_code)
            for key, value in response.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                       "content-encoding"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Forward


@pytest.fixture(scope="module")
def gcs_recorder(gcs_server: ServerProcess) -> Iterator[Recorder]:
    recorder = Recorder(upstream=gcs_server.url)
    recorder.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    thread = threading.Thread(target=recorder.server.serve_forever, daemon=True)
    thread.start()
    yield recorder
    recorder.server.shutdown()
    recorder.server.server_close()


# --- buckets and configuration ---------------------------------------------------------------


@dataclass
class Buckets:
    s3: str
    gcs: str
    config: Config
    config_file: Path
    s3_client: Any
    gcs_client: Any

    def ctx(self) -> DomainContext:
        return DomainContext(self.config, EU)

    def s3_rules(self) -> list[dict[str, Any]]:
        return S3Lifecycle(self.s3, S3_REGION, client=self.s3_client).raw_rules()

    def gcs_rules(self) -> list[dict[str, Any]]:
        return GCSLifecycle(self.gcs, project=GCS_PROJECT, client=self.gcs_client).raw_rules()


def write_config(tmp_path: Path, s3_bucket: str, gcs_bucket: str, s3_url: str, gcs_url: str,
                 *, pii_days: int = 29, object_lock: str | None = None) -> tuple[Config, Path]:
    key = tmp_path / "eu.key"
    key.write_text(generate_domain_key() + "\n")
    data = {
        "version": 1,
        "development": True,
        "spool_dir": str(tmp_path / "spool"),
        "s3": {"endpoint_url": s3_url},
        "gcs": {"endpoint_url": gcs_url, "project": GCS_PROJECT},
        "retention": {"pii_days": pii_days},
        "domains": {"eu": {
            "aws_region": S3_REGION, "s3_bucket": s3_bucket,
            "gcp_location": GCS_LOCATION, "gcs_bucket": gcs_bucket,
            "key": {"id": "eu-test-1", "secret": {"file": str(key)}},
            **({"object_lock": {"mode": object_lock}} if object_lock else {}),
        }},
    }
    path = tmp_path / "regionvault.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(data, origin="test", env={}), path


@pytest.fixture
def buckets(tmp_path: Path, moto_server: ServerProcess, s3_client: Any, gcs_client: Any,
            gcs_recorder: Recorder) -> Buckets:
    s3_bucket, gcs_bucket = new_bucket_name(), new_bucket_name()
    s3_client.create_bucket(Bucket=s3_bucket,
                            CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    bucket = gcs_client.create_bucket(gcs_bucket)
    # The emulator ignores the location given at creation; set it the way GCS would report it.
    bucket._patch_property("location", GCS_LOCATION.upper())
    bucket.patch()
    config, path = write_config(tmp_path, s3_bucket, gcs_bucket, moto_server.url,
                                gcs_recorder.url)
    return Buckets(s3_bucket, gcs_bucket, config, path, s3_client, gcs_client)


def by_id(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["ID"]: r for r in rules}


# --- S3 --------------------------------------------------------------------------------------


def test_provision_then_check_finds_nothing_and_twice_changes_nothing(
        buckets: Buckets, gcs_recorder: Recorder) -> None:
    assert {(f.store, f.rule) for f in check_rules(buckets.ctx())} >= {
        ("s3", RULE_PII), ("s3", RULE_ABORT_UPLOADS), ("gcs", RULE_PII),
        ("gcs", "softDeletePolicy")}

    first = provision(buckets.ctx())
    assert [(o.store, o.changed, o.refused) for o in first] == [("s3", True, None),
                                                                ("gcs", True, None)]
    assert check_rules(buckets.ctx()) == []
    s3_rules, gcs_rules = buckets.s3_rules(), buckets.gcs_rules()
    assert by_id(s3_rules) == {
        RULE_PII: {"ID": RULE_PII, "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
                   "Expiration": {"Days": 28}},
        RULE_ABORT_UPLOADS: {"ID": RULE_ABORT_UPLOADS, "Status": "Enabled",
                             "Filter": {"Prefix": ""},
                             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    }
    assert gcs_rules == [{"action": {"type": "Delete"},
                          "condition": {"age": 28, "matchesPrefix": ["eu/pii/"]}}]

    patches = len(gcs_recorder.patches_of(buckets.gcs))
    second = provision(buckets.ctx())
    assert [(o.store, o.changed) for o in second] == [("s3", False), ("gcs", False)]
    assert buckets.s3_rules() == s3_rules
    assert buckets.gcs_rules() == gcs_rules
    assert len(gcs_recorder.patches_of(buckets.gcs)) == patches  # nothing sent the second time


def test_a_rule_deleted_by_hand_is_reported_by_name(buckets: Buckets) -> None:
    provision(buckets.ctx())
    buckets.s3_client.delete_bucket_lifecycle(Bucket=buckets.s3)
    findings = check_rules(buckets.ctx())
    assert {(f.store, f.rule, f.problem) for f in findings} == {
        ("s3", RULE_PII, Problem.MISSING), ("s3", RULE_ABORT_UPLOADS, Problem.MISSING)}
    assert all(f.message.startswith(f"s3://{buckets.s3}: lifecycle rule '") for f in findings)

    # Only one rule gone (the other put back by hand): only that one is reported.
    buckets.s3_client.put_bucket_lifecycle_configuration(
        Bucket=buckets.s3, LifecycleConfiguration={"Rules": [
            {"ID": RULE_PII, "Status": "Enabled", "Filter": {"Prefix": "eu/pii/"},
             "Expiration": {"Days": 28}}]})
    assert [f.rule for f in check_rules(buckets.ctx())] == [RULE_ABORT_UPLOADS]


# 29 days: what provision wrote before the rule moved a day under the ceiling.
@pytest.mark.parametrize("days", [40, 29])
def test_a_weaker_rule_is_reported_and_provision_repairs_it(buckets: Buckets, days: int) -> None:
    provision(buckets.ctx())
    rules = by_id(buckets.s3_rules())
    rules[RULE_PII]["Expiration"] = {"Days": days}
    buckets.s3_client.put_bucket_lifecycle_configuration(
        Bucket=buckets.s3, LifecycleConfiguration={"Rules": list(rules.values())})
    (finding,) = check_rules(buckets.ctx())
    assert (finding.rule, finding.problem) == (RULE_PII, Problem.WEAKER)
    assert f"acts after {days} days, the policy allows 28 days" in finding.message

    assert provision(buckets.ctx())[0].changed
    assert by_id(buckets.s3_rules())[RULE_PII]["Expiration"] == {"Days": 28}
    assert check_rules(buckets.ctx()) == []


def test_unrelated_rules_survive_provision(buckets: Buckets) -> None:
    logs = {"ID": "logs-after-90-days", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
            "Expiration": {"Days": 90}}
    archive = {"ID": "archive-metadata", "Status": "Enabled",
               "Filter": {"Prefix": "eu/metadata/"},
               "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}
    buckets.s3_client.put_bucket_lifecycle_configuration(
        Bucket=buckets.s3, LifecycleConfiguration={"Rules": [logs, archive]})
    gcs_archive = {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
                   "condition": {"age": 30, "matchesPrefix": ["eu/metadata/"]}}
    gcs_tmp = {"action": {"type": "Delete"}, "condition": {"age": 2, "matchesPrefix": ["tmp/"]}}
    bucket = buckets.gcs_client.bucket(buckets.gcs)
    bucket.lifecycle_rules = [gcs_archive, gcs_tmp]
    bucket.patch()

    provision(buckets.ctx())
    provision(buckets.ctx())
    s3_rules = by_id(buckets.s3_rules())
    assert s3_rules["logs-after-90-days"] == logs
    assert s3_rules["archive-metadata"] == archive
    assert set(s3_rules) == {"logs-after-90-days", "archive-metadata", RULE_PII,
                             RULE_ABORT_UPLOADS}
    assert buckets.gcs_rules()[:2] == [gcs_archive, gcs_tmp]
    assert len(buckets.gcs_rules()) == 3
    assert check_rules(buckets.ctx()) == []


def test_a_versioned_bucket_gets_noncurrent_expiry_within_the_ceiling(buckets: Buckets) -> None:
    provision(buckets.ctx())
    buckets.s3_client.put_bucket_versioning(Bucket=buckets.s3,
                                            VersioningConfiguration={"Status": "Enabled"})
    # Versioned after it was provisioned: a deleted backup would stay as a noncurrent version.
    (finding,) = check_rules(buckets.ctx())
    assert (finding.store, finding.rule, finding.problem) == (
        "s3", RULE_PII_NONCURRENT, Problem.MISSING)
    assert "the bucket is versioned" in finding.message

    outcome = provision(buckets.ctx())[0]
    assert outcome.changed and outcome.versioned
    rules = by_id(buckets.s3_rules())
    current = rules[RULE_PII]["Expiration"]["Days"]
    noncurrent = rules[RULE_PII_NONCURRENT]["NoncurrentVersionExpiration"]["NoncurrentDays"]
    assert rules[RULE_PII_NONCURRENT]["Filter"] == {"Prefix": "eu/pii/"}
    assert (current, noncurrent) == (27, 1)
    assert current + noncurrent == 28  # a day under the 29-day ceiling
    assert check_rules(buckets.ctx()) == []

    # A noncurrent expiry made longer by hand breaks the total, and check says so.
    rules[RULE_PII_NONCURRENT]["NoncurrentVersionExpiration"] = {"NoncurrentDays": 5}
    buckets.s3_client.put_bucket_lifecycle_configuration(
        Bucket=buckets.s3, LifecycleConfiguration={"Rules": list(rules.values())})
    (finding,) = check_rules(buckets.ctx())
    assert finding.problem is Problem.WEAKER
    assert "up to 32 days, the policy allows 28 days" in finding.message


def test_a_versioned_bucket_that_cannot_keep_the_ceiling_is_refused(
        tmp_path: Path, buckets: Buckets, moto_server: ServerProcess,
        gcs_recorder: Recorder) -> None:
    config, _ = write_config(tmp_path, buckets.s3, buckets.gcs, moto_server.url,
                             gcs_recorder.url, pii_days=1)
    buckets.s3_client.put_bucket_versioning(Bucket=buckets.s3,
                                            VersioningConfiguration={"Status": "Enabled"})
    s3_outcome, gcs_outcome = provision(DomainContext(config, EU))
    assert s3_outcome.refused is not None
    assert s3_outcome.refused.startswith(f"s3://{buckets.s3} is versioned and "
                                         "retention.pii_days is 1")
    assert buckets.s3_rules() == []  # nothing written there
    assert gcs_outcome.refused is None and gcs_outcome.changed  # the other bucket still is
    (finding,) = check_rules(DomainContext(config, EU))
    assert (finding.store, finding.rule) == ("s3", RULE_PII_NONCURRENT)


# --- GCS -------------------------------------------------------------------------------------


def test_the_gcs_request_matches_the_real_api_schema(buckets: Buckets,
                                                     gcs_recorder: Recorder) -> None:
    provision(buckets.ctx())
    (body,) = gcs_recorder.patches_of(buckets.gcs)
    jsonschema.validate(body, SCHEMA)
    assert body == {
        "lifecycle": {"rule": [{"action": {"type": "Delete"},
                                "condition": {"age": 28, "matchesPrefix": ["eu/pii/"]}}]},
        "softDeletePolicy": {"retentionDurationSeconds": "0"},
    }
    bucket = buckets.gcs_client.bucket(buckets.gcs)
    bucket.reload()
    assert bucket.soft_delete_policy.retention_duration_seconds == 0


def test_a_versioned_gcs_bucket_gets_noncurrent_expiry(buckets: Buckets,
                                                       gcs_recorder: Recorder) -> None:
    bucket = buckets.gcs_client.bucket(buckets.gcs)
    bucket.versioning_enabled = True
    bucket.patch()
    findings = check_rules(buckets.ctx())
    assert ("gcs", RULE_PII_NONCURRENT, Problem.MISSING) in {
        (f.store, f.rule, f.problem) for f in findings}

    provision(buckets.ctx())
    (body,) = gcs_recorder.patches_of(buckets.gcs)
    jsonschema.validate(body, SCHEMA)
    assert body["lifecycle"]["rule"] == [
        {"action": {"type": "Delete"}, "condition": {"age": 27, "matchesPrefix": ["eu/pii/"]}},
        {"action": {"type": "Delete"}, "condition": {
            "isLive": False, "daysSinceNoncurrentTime": 1, "matchesPrefix": ["eu/pii/"]}},
    ]
    assert check_rules(buckets.ctx()) == []


def test_a_weaker_or_missing_gcs_rule_is_reported(buckets: Buckets) -> None:
    provision(buckets.ctx())
    bucket = buckets.gcs_client.bucket(buckets.gcs)
    bucket.lifecycle_rules = [{"action": {"type": "Delete"},
                               "condition": {"age": 40, "matchesPrefix": ["eu/pii/"]}}]
    bucket.patch()
    (finding,) = check_rules(buckets.ctx())
    assert (finding.store, finding.rule, finding.problem) == ("gcs", RULE_PII, Problem.WEAKER)
    assert finding.message.startswith(f"gs://{buckets.gcs}: lifecycle rule '{RULE_PII}' is "
                                      "weaker than the policy")

    bucket.lifecycle_rules = []
    bucket.patch()
    (finding,) = check_rules(buckets.ctx())
    assert (finding.rule, finding.problem) == (RULE_PII, Problem.MISSING)


@pytest.mark.parametrize("bad", [
    {"lifecycle": {"rule": [{"action": {"type": "Delete"},
                             "condition": {"age": 29, "matchPrefix": ["eu/pii/"]}}]}},
    {"lifecycle": {"rule": [{"action": {"type": "Remove"}, "condition": {"age": 29}}]}},
    {"lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": "29"}}]}},
    {"lifecycle": {"rule": [{"action": {"type": "SetStorageClass"}, "condition": {"age": 1}}]}},
    {"lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {}}]}},
    {"softDeletePolicy": {"retentionDurationSeconds": "0", "effectiveTime": "2026-01-01"}},
])
def test_the_schema_refuses_what_gcs_would_refuse(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


# --- the command line ------------------------------------------------------------------------


def regionvault(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGIONVAULT_")}
    return subprocess.run([str(_BIN / "regionvault"), *args, "--config", str(config_file)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_cli_exit_codes(buckets: Buckets) -> None:
    before = regionvault(buckets.config_file, "check", "--domain", "eu", "--local")
    assert before.returncode == 3, before.stderr
    assert f"s3://{buckets.s3}: lifecycle rule '{RULE_PII}' is missing" in before.stderr

    provisioned = regionvault(buckets.config_file, "provision", "--domain", "eu")
    assert provisioned.returncode == 0, provisioned.stderr
    assert f"s3://{buckets.s3}: lifecycle rules written" in provisioned.stdout
    again = regionvault(buckets.config_file, "provision", "--domain", "eu")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already in place, nothing written") == 2

    ok = regionvault(buckets.config_file, "check", "--domain", "eu", "--local")
    assert ok.returncode == 0, ok.stderr
    assert "2 buckets (s3, gcs) ok" in ok.stdout
    assert "lifecycle rules of both buckets as the policy requires" in ok.stdout

    buckets.s3_client.delete_bucket_lifecycle(Bucket=buckets.s3)
    deleted = regionvault(buckets.config_file, "check", "--domain", "eu", "--local")
    assert deleted.returncode == 3
    assert f"error: s3://{buckets.s3}: lifecycle rule '{RULE_PII}' is missing" in deleted.stderr
    assert f"lifecycle rule '{RULE_ABORT_UPLOADS}' is missing" in deleted.stderr


def test_the_cli_refuses_a_bucket_it_cannot_provision(tmp_path: Path, buckets: Buckets,
                                                      moto_server: ServerProcess,
                                                      gcs_recorder: Recorder) -> None:
    _, config_file = write_config(tmp_path, buckets.s3, buckets.gcs, moto_server.url,
                                  gcs_recorder.url, pii_days=1)
    buckets.s3_client.put_bucket_versioning(Bucket=buckets.s3,
                                            VersioningConfiguration={"Status": "Enabled"})
    result = regionvault(config_file, "provision", "--domain", "eu")
    assert result.returncode == 3
    assert f"error: refused: s3://{buckets.s3} is versioned and retention.pii_days is 1" \
        in result.stderr
    assert f"gs://{buckets.gcs}: lifecycle rules written" in result.stdout


# --- object lock -----------------------------------------------------------------------------


@dataclass
class Locked:
    """A lock domain's configuration and what a test looks at."""

    s3: str
    gcs: str
    config: Config
    config_file: Path
    s3_client: Any
    gcs_client: Any

    def ctx(self) -> DomainContext:
        return DomainContext(self.config, EU)


def lock_domain(tmp_path: Path, moto_server: ServerProcess, recorder: Recorder, s3_client: Any,
                gcs_client: Any, *, s3_bucket: str | None = None, gcs_bucket: str | None = None,
                mode: str = "governance", pii_days: int = 29) -> Locked:
    """A domain configured with ``object_lock``; buckets not given do not exist yet."""
    s3_name, gcs_name = s3_bucket or new_bucket_name(), gcs_bucket or new_bucket_name()
    config, path = write_config(tmp_path, s3_name, gcs_name, moto_server.url, recorder.url,
                                pii_days=pii_days, object_lock=mode)
    return Locked(s3_name, gcs_name, config, path, s3_client, gcs_client)


def test_provision_creates_missing_buckets_able_to_lock_and_check_reports_them(
        tmp_path: Path, moto_server: ServerProcess, s3_client: Any, gcs_client: Any,
        gcs_recorder: Recorder) -> None:
    domain = lock_domain(tmp_path, moto_server, gcs_recorder, s3_client, gcs_client,
                         mode="compliance")
    # configured, and no bucket yet: check cannot even find them
    s3_outcome, gcs_outcome = provision(domain.ctx())

    assert s3_outcome.lock is not None and s3_outcome.lock.created
    assert s3_outcome.lock.refused is None
    assert s3_outcome.versioned  # Object Lock makes the bucket versioned: versioned rules
    config = s3_client.get_object_lock_configuration(Bucket=domain.s3)["ObjectLockConfiguration"]
    assert config == {"ObjectLockEnabled": "Enabled"}  # and no default retention rule
    assert s3_client.get_bucket_versioning(Bucket=domain.s3)["Status"] == "Enabled"
    location = s3_client.get_bucket_location(Bucket=domain.s3)["LocationConstraint"]
    assert location == S3_REGION
    rules = by_id(S3Lifecycle(domain.s3, S3_REGION, client=s3_client).raw_rules())
    assert set(rules) == {RULE_PII, RULE_PII_NONCURRENT, RULE_NONCURRENT, RULE_ABORT_UPLOADS}
    assert rules[RULE_NONCURRENT] == {
        "ID": RULE_NONCURRENT, "Status": "Enabled", "Filter": {"Prefix": "eu/"},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}

    # GCS: created with object retention, the request as the API defines it
    assert gcs_outcome.lock is not None and gcs_outcome.lock.created
    (insert,) = gcs_recorder.inserts_of(domain.gcs)
    jsonschema.validate(insert, {"$schema": RETENTION_SCHEMA["$schema"],
                                 "$defs": RETENTION_SCHEMA["$defs"],
                                 "$ref": "#/$defs/bucketInsert"})
    assert insert["body"] == {"name": domain.gcs, "location": GCS_LOCATION}

    assert check_rules(domain.ctx()) == []
    assert check_locks(domain.ctx()) == []
    settings = domain.ctx().gcs.lock_settings()
    assert settings.lock_enabled  # as the shim reports it, in GCS's form:
    bucket = gcs_client.get_bucket(domain.gcs)  # (straight from the emulator: not there)
    assert "objectRetention" not in bucket._properties

    again = provision(domain.ctx())
    assert [(o.changed, o.lock.created, o.lock.changed) for o in again if o.lock] == [
        (False, False, False), (False, False, False)]


def test_provision_enables_object_lock_on_an_existing_s3_bucket(buckets: Buckets,
                                                                tmp_path: Path,
                                                                moto_server: ServerProcess,
                                                                gcs_recorder: Recorder) -> None:
    domain = lock_domain(tmp_path, moto_server, gcs_recorder, buckets.s3_client,
                         buckets.gcs_client, s3_bucket=buckets.s3, gcs_bucket=buckets.gcs)
    (finding,) = [f for f in check_locks(domain.ctx()) if f.store == "s3"]
    assert (finding.rule, finding.problem) == (LOCK_SETTING, Problem.OBJECT_LOCK)
    assert finding.message.startswith(
        f"s3://{buckets.s3}: object lock (governance mode) is configured for domain eu but the "
        "bucket cannot lock objects")

    s3_outcome, _ = provision(domain.ctx())
    assert s3_outcome.lock is not None
    assert (s3_outcome.lock.created, s3_outcome.lock.changed) == (False, True)
    assert s3_outcome.lock.settings is not None and s3_outcome.lock.settings.lock_enabled
    assert s3_outcome.versioned
    assert [f for f in check_locks(domain.ctx()) if f.store == "s3"] == []
    assert [f for f in check_rules(domain.ctx()) if f.store == "s3"] == []


def test_an_existing_gcs_bucket_without_object_retention_is_refused(
        buckets: Buckets, tmp_path: Path, moto_server: ServerProcess,
        gcs_recorder: Recorder) -> None:
    domain = lock_domain(tmp_path, moto_server, gcs_recorder, buckets.s3_client,
                         buckets.gcs_client, s3_bucket=buckets.s3, gcs_bucket=buckets.gcs)
    _, gcs_outcome = provision(domain.ctx())
    assert gcs_outcome.lock is not None and gcs_outcome.lock.refused is not None
    assert gcs_outcome.lock.refused.startswith(
        f"gs://{buckets.gcs} cannot lock objects: object retention is not enabled on it")
    assert gcs_outcome.refused is None and gcs_outcome.changed  # its rules are still written
    assert [f.store for f in check_locks(domain.ctx())] == ["gcs"]


def test_a_default_retention_rule_is_reported_and_removed(buckets: Buckets) -> None:
    """Even where the domain configures no lock: it would lock the manifests too, for a period
    regionvault does not choose."""
    buckets.s3_client.put_bucket_versioning(Bucket=buckets.s3,
                                            VersioningConfiguration={"Status": "Enabled"})
    buckets.s3_client.put_object_lock_configuration(Bucket=buckets.s3, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 400}}})
    (finding,) = check_locks(buckets.ctx())
    assert "default retention rule (COMPLIANCE 400 days)" in finding.message

    s3_outcome, gcs_outcome = provision(buckets.ctx())
    assert s3_outcome.lock is not None and s3_outcome.lock.changed
    assert gcs_outcome.lock is None  # nothing configured, nothing to report
    config = buckets.s3_client.get_object_lock_configuration(
        Bucket=buckets.s3)["ObjectLockConfiguration"]
    assert "Rule" not in config
    assert check_locks(buckets.ctx()) == []


def test_a_lock_that_would_leave_no_backstop_is_refused_before_anything_is_written(
        buckets: Buckets, tmp_path: Path, moto_server: ServerProcess,
        gcs_recorder: Recorder) -> None:
    domain = lock_domain(tmp_path, moto_server, gcs_recorder, buckets.s3_client,
                         buckets.gcs_client, s3_bucket=buckets.s3, gcs_bucket=buckets.gcs,
                         pii_days=1)
    s3_outcome, _ = provision(domain.ctx())
    assert s3_outcome.refused is not None and "retention.pii_days is 1" in s3_outcome.refused
    assert "Status" not in buckets.s3_client.get_bucket_versioning(Bucket=buckets.s3)


def test_the_cli_provisions_and_checks_the_lock(
        tmp_path: Path, moto_server: ServerProcess, s3_client: Any, gcs_client: Any,
        gcs_recorder: Recorder) -> None:
    domain = lock_domain(tmp_path, moto_server, gcs_recorder, s3_client, gcs_client)
    provisioned = regionvault(domain.config_file, "provision", "--domain", "eu")
    assert provisioned.returncode == 0, provisioned.stderr
    assert f"s3://{domain.s3}: bucket created with object lock (object lock on, versioned; " \
        "backups locked in governance mode until their expiry)" in provisioned.stdout
    assert f"gs://{domain.gcs}: bucket created with object lock" in provisioned.stdout

    ok = regionvault(domain.config_file, "check", "--domain", "eu", "--local")
    assert ok.returncode == 0, ok.stderr
    assert f"s3://{domain.s3}: object lock on, versioned; backups locked in governance mode" \
        in ok.stdout

    # configured, and the bucket cannot lock (another bucket of the domain, made by hand)
    plain = new_bucket_name()
    s3_client.create_bucket(Bucket=plain,
                            CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    (tmp_path / "other").mkdir()
    other = lock_domain(tmp_path / "other", moto_server, gcs_recorder, s3_client, gcs_client,
                        s3_bucket=plain, gcs_bucket=domain.gcs)
    missing = regionvault(other.config_file, "check", "--domain", "eu", "--local")
    assert missing.returncode == 3
    assert f"error: s3://{plain}: object lock (governance mode) is configured for domain eu " \
        "but the bucket cannot lock objects" in missing.stderr
    assert f"s3://{plain}: object lock off; backups locked in governance mode" in missing.stdout
