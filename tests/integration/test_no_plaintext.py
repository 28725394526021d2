"""Acceptance 2: a marker written into a source never appears at rest (spool, S3, GCS, Redis,
worker logs, worker metrics) and does appear after a restore. Neither does any key: every
domain key the stack holds and the backup's own data key, raw, in base64 or in hex (the
manifest carries the data key only wrapped)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import zstandard

from regionvault.context import DomainContext
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.keyring import KEY_BYTES
from regionvault.manifest import STEPS, new_backup_id
from regionvault.manifest_store import (
    data_key_context,
    keys_of,
    read_manifest,
    resolve,
    stream_context,
)
from regionvault.restore import restore
from regionvault.sources.postgres import pg_tool
from regionvault.streamformat import decrypt_chunks
from tests.integration.helpers import all_objects, config_of, context, run_step

pytestmark = pytest.mark.stack


# --- key material ------------------------------------------------------------------------------


def _key_bytes(text: str) -> bytes | None:
    """A 256-bit key written in base64 or hex, else None."""
    text = text.strip()
    for decode in (lambda t: base64.b64decode(t, validate=True), bytes.fromhex):
        try:
            raw = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_BYTES:
            return raw
    return None


def _materials(node: Any) -> Iterator[str]:
    """Every ``"material"`` string anywhere in a keyring file's JSON."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "material" and isinstance(value, str):
                yield value
            else:
                yield from _materials(value)
    elif isinstance(node, list):
        for value in node:
            yield from _materials(value)


def domain_keys(stack: DevStack) -> dict[Domain, list[bytes]]:
    """Every domain key the stack holds, per domain, as the configuration finds them: static
    keys (``key``/``previous_keys``: base64 in a secret) or a managed keyring file (JSON whose
    ``material`` fields hold the keys). Fails unless every domain has at least one."""
    found: dict[Domain, list[bytes]] = {}
    for domain, dcfg in config_of(stack).domains.items():
        keys = found.setdefault(domain, [])
        for ref in dcfg.all_keys():
            raw = _key_bytes(ref.secret.read(f"key {ref.id!r}"))
            assert raw is not None, f"key {ref.id!r} of {domain.value} is not 32 bytes"
            keys.append(raw)
        keyring = getattr(dcfg, "keyring", None)
        if keyring is not None:
            for material in _materials(json.loads(Path(keyring.file).read_text())):
                raw = _key_bytes(material)
                if raw is not None:
                    keys.append(raw)
    missing = [d.value for d, keys in found.items() if not keys]
    assert found and not missing, f"no key material found for domains {missing or 'at all'}"
    return found


def key_forms(key: bytes) -> dict[str, bytes]:
    """How a key could be written down: raw, base64 (both alphabets), hex (both cases)."""
    return {"raw": key, "base64": base64.b64encode(key),
            "base64url": base64.urlsafe_b64encode(key), "hex": key.hex().encode(),
            "HEX": key.hex().upper().encode()}


def unwrap_data_key(ctx: DomainContext, backup_id: str) -> bytes:
    """The backup's data key, unwrapped from its S3 manifest as ``restore`` does it: the first
    of the manifest's wrappings that the domain's keyring opens."""
    ref, src = resolve(ctx, backup_id)
    manifest = read_manifest(ctx, ctx.s3, keys_of(ref, src)[1])
    assert manifest is not None, f"no manifest of {backup_id} in S3"
    assert manifest.wrappings, f"the manifest of {backup_id} holds no wrapped data key"
    return bytes(ctx.keyring.unwrap(manifest.wrappings, data_key_context(ref)))


# --- where things are at rest ------------------------------------------------------------------


def _redis_bytes(url: str) -> list[Any]:
    """Every key and value in every database of the Redis server at ``url`` (broker, result
    backend and journal may each use their own database number)."""
    values: list[Any] = []  # bytes: the clients do not decode responses
    keyspace = redis.Redis.from_url(url).info("keyspace")
    numbers = {int(name[2:]) for name in keyspace if name.startswith("db")}
    assert numbers, "Redis holds nothing at all, so the checks below would prove nothing"
    for db in sorted(numbers):
        client: Any = redis.Redis.from_url(url, db=db)
        for key in client.scan_iter(count=1000):
            values.append(key)
            kind = client.type(key)
            if kind == b"string":
                values.append(client.get(key) or b"")
            elif kind == b"list":
                values.extend(client.lrange(key, 0, -1))
            elif kind == b"hash":
                for k, v in client.hgetall(key).items():
                    values += [k, v]
            elif kind == b"set":
                values.extend(client.smembers(key))
            elif kind == b"zset":
                values.extend(client.zrange(key, 0, -1))
            elif kind == b"stream":
                for _, entry in client.xrange(key):
                    for k, v in entry.items():
                        values += [k, v]
    return values


def _metrics_texts(stack: DevStack) -> dict[str, bytes]:
    """The Prometheus text each domain worker exports."""
    texts: dict[str, bytes] = {}
    for port in stack.metrics_ports.values():
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            texts[url] = response.read()
    return texts


def _plaintext_of(object_bytes: bytes, data_key: bytes, context: bytes) -> bytes:
    """Decrypt a backup object with ``data_key`` and decompress it."""
    compressed = b"".join(decrypt_chunks(io.BytesIO(object_bytes), data_key, context))
    return zstandard.ZstdDecompressor().decompressobj().decompress(compressed)


def test_marker_and_keys_never_at_rest_and_marker_back_after_restore(stack: DevStack) -> None:
    assert stack.postgres is not None
    marker = f"RVMARKER-{uuid.uuid4().hex}"
    db = sample.database_name(Domain.EU, "accounts")
    stack.postgres.execute(db, f"INSERT INTO customers (email, name) VALUES "
                               f"('{marker}@example.eu', '{marker}')")
    needle = marker.encode()
    # positive control: a plain pg_dump of the source does contain the marker
    plain = subprocess.run([pg_tool("pg_dump"), "--format=custom", "--compress=0",
                            f"--dbname={stack.postgres.dsn(db)}"], capture_output=True,
                           check=True).stdout
    assert needle in plain

    ctx = context(stack, Domain.EU)
    spool = config_of(stack).spool_for(Domain.EU)
    backup_id = new_backup_id(Domain.EU, "accounts", ctx.clock())
    spool_files: dict[str, bytes] = {}
    for step in STEPS:  # one step at a time, looking at the spool between steps
        run_step(stack, step, backup_id, Domain.EU, "accounts")
        for path in spool.rglob("*"):
            if path.is_file():
                spool_files[f"{path} (after {step.value})"] = path.read_bytes()
    assert spool_files, "the spool was never used, so the check below proves nothing"

    # The backup's own data key. Positive control: it is a 256-bit key that really opens the
    # stored object, and what it opens holds the marker; so looking for it below means looking
    # for the key that protects this backup.
    data_key = unwrap_data_key(ctx, backup_id)
    assert len(data_key) == KEY_BYTES
    ref, src = resolve(ctx, backup_id)
    object_key, manifest_key = keys_of(ref, src)
    objects = all_objects(stack)
    stored = objects[f"s3://{ctx.dcfg.s3_bucket}"][object_key]
    assert needle in _plaintext_of(stored, data_key, stream_context(ref, "backup-stream"))

    secrets: dict[str, bytes] = {"the marker": needle}
    for form, encoded in key_forms(data_key).items():
        secrets[f"the data key of {backup_id} ({form})"] = encoded
    for domain, keys in domain_keys(stack).items():
        for n, key in enumerate(keys):
            for form, encoded in key_forms(key).items():
                secrets[f"domain key {n} of {domain.value} ({form})"] = encoded

    places: dict[str, bytes] = {f"spool file {name}": data
                                for name, data in spool_files.items()}
    for bucket, contents in objects.items():
        for name, data in contents.items():
            places[f"{bucket}/{name}"] = data
    for bucket in (f"s3://{ctx.dcfg.s3_bucket}", f"gs://{ctx.dcfg.gcs_bucket}"):
        assert f"{bucket}/{object_key}" in places and f"{bucket}/{manifest_key}" in places, \
            f"the backup or its manifest is missing from {bucket}: the check proves nothing"
    # the manifest carries the data key wrapped, in base64, as readable JSON: the same search
    # would find the data key there had it been written unwrapped
    manifest = read_manifest(ctx, ctx.s3, manifest_key)
    assert manifest is not None and manifest.wrappings
    for wrapping in manifest.wrappings:
        assert wrapping.blob.encode() in places[f"s3://{ctx.dcfg.s3_bucket}/{manifest_key}"]
    places.update({f"Redis value {n}": value
                   for n, value in enumerate(_redis_bytes(stack.env["REGIONVAULT_BROKER_URL"]))})
    logs = {f"log {log}": log.read_bytes() for log in stack.logs.glob("*.log")}
    assert any(name.startswith("log ") and "worker-eu" in name for name in logs), \
        "the EU worker's log was not found, so the log check proves nothing"
    places.update(logs)
    metrics = _metrics_texts(stack)
    assert any(text for text in metrics.values()), "no worker metrics were read"
    places.update({f"metrics {url}": text for url, text in metrics.items()})

    for what, secret in secrets.items():
        leaked = [where for where, data in places.items() if secret in data]
        assert not leaked, f"{what} found at rest in: {', '.join(leaked)}"

    stack.postgres.create_database("marker_restore")
    try:
        restore(ctx, backup_id, stack.postgres.dsn("marker_restore"))
        rows = stack.postgres.execute("marker_restore",
                                      f"SELECT count(*) FROM customers WHERE name = '{marker}'")
        assert rows == [(1,)]
    finally:
        stack.postgres.drop_database("marker_restore")
