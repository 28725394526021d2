"""Small helpers shared by the integration tests: run chains, look inside the stores."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import redis
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from regionvault.config import Config
from regionvault.context import DomainContext
from regionvault.devstack.stack import DEV_AWS_ENV, DevStack
from regionvault.domains import Domain
from regionvault.journal import BackupRecord, BackupState, StepState
from regionvault.manifest import STEPS, Step, new_backup_id


def config_of(stack: DevStack) -> Config:
    assert stack.config is not None
    return stack.config


def context(stack: DevStack, domain: Domain) -> DomainContext:
    return DomainContext(config_of(stack), domain)


def run_chain(stack: DevStack, domain: Domain, source: str, *, deep: bool = True,
              timeout: float = 120) -> str:
    """Run a whole backup chain through the real workers; return the backup id once its last
    step (expire) is done."""
    from workers.canvas import start_run

    backup_id = new_backup_id(domain, source, context(stack, domain).clock())
    assert start_run(domain.value, source, backup_id, deep_verify=deep, note="test").accepted
    wait_for_step(backup_id, Step.EXPIRE, timeout=timeout)
    return backup_id


def wait_for_step(backup_id: str, step: Step, *, timeout: float = 120) -> BackupRecord:
    """Poll the journal until ``step`` of the backup is done; fail on a failed or cancelled
    backup, naming its error."""
    from workers.journal import journal

    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = journal().get(backup_id)
        if record is not None:
            if record.steps[step].state is StepState.DONE:
                return record
            if record.state in (BackupState.FAILED, BackupState.CANCELLED):
                raise AssertionError(f"backup {backup_id} is {record.state.value} at "
                                     f"{record.error_step}: {record.error}")
        time.sleep(0.1)
    raise AssertionError(f"step {step.value} of backup {backup_id} not done in {timeout}s: "
                         f"{record}")


def run_step(stack: DevStack, step: Step, backup_id: str, domain: Domain, source: str,
             *, timeout: float = 60) -> dict[str, Any]:
    """Run one step as a Celery task on the domain's worker and return its result."""
    from workers.canvas import step_signature

    outcome = step_signature(step, backup_id, domain.value, source,
                             deep_verify=True).apply_async().get(timeout=timeout)
    assert isinstance(outcome, dict)
    return outcome


def s3_client(stack: DevStack, region: str = "us-east-2") -> Any:
    return boto3.client("s3", endpoint_url=stack.env["REGIONVAULT_S3_ENDPOINT"],
                        region_name=region,
                        aws_access_key_id=DEV_AWS_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=DEV_AWS_ENV["AWS_SECRET_ACCESS_KEY"])


def gcs_client(stack: DevStack) -> storage.Client:
    return storage.Client(project="regionvault-dev", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": stack.env["REGIONVAULT_GCS_ENDPOINT"]})


def all_objects(stack: DevStack) -> dict[str, dict[str, bytes]]:
    """Every object of every bucket on both emulators: {"s3://b" or "gs://b": {key: bytes}}."""
    s3 = s3_client(stack)
    found: dict[str, dict[str, bytes]] = {}
    for bucket in s3.list_buckets()["Buckets"]:
        name = bucket["Name"]
        objects: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                objects[item["Key"]] = s3.get_object(Bucket=name, Key=item["Key"])["Body"].read()
        found[f"s3://{name}"] = objects
    gcs = gcs_client(stack)
    for bucket in gcs.list_buckets():
        found[f"gs://{bucket.name}"] = {
            blob.name: blob.download_as_bytes() for blob in gcs.list_blobs(bucket.name)}
    return found


def object_names(stack: DevStack) -> dict[str, set[str]]:
    return {bucket: set(objs) for bucket, objs in all_objects(stack).items()}


def regionvault_cli(stack: DevStack, *args: str, env: dict[str, str] | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, **stack.env, **(env or {})}
    return subprocess.run([str(Path(sys.executable).parent / "regionvault"), *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout,
                          check=False)


__all__ = ["STEPS", "Step"]


# --- what a broker holds ---------------------------------------------------------------------


def _decoded(value: bytes) -> list[bytes]:
    """``value`` and, if it is a Celery/kombu message (JSON with a base64 body), its body:
    task arguments are inside the body, which a plain search of the bytes cannot see."""
    found = [value]
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return found
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            body = node.get("body")
            if isinstance(body, str) and node.get("properties", {}).get(
                    "body_encoding") == "base64":
                found.append(base64.b64decode(body))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def redis_contents(url: str) -> bytes:
    """Every key of a broker or result backend and everything stored under it, decoded
    where it is a Celery message, as one blob to search."""
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in client.scan_iter(count=500):
        parts.append(key)
        kind = client.type(key).decode()
        values: list[bytes]
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "hash":
            values = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == "list":
            values = list(client.lrange(key, 0, -1))
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [b for _, fields in client.xrange(key)
                      for pair in fields.items() for b in pair]
        else:
            raise AssertionError(f"key {key!r} of {url} has a type this scan cannot read: {kind}")
        for value in values:
            parts.extend(_decoded(value))
    return b"\n".join(parts)
