"""Benchmark: what live rotation costs a worker per task.

Run by hand from the repository root (a few seconds; never run by the test suite):

    .venv/bin/python bench/keyring_reload.py [--calls 200000] [--out bench/results/x.json]

A worker reads ``DomainContext.keyring`` a few times per step (dump wraps, the seal opens,
restore opens). With a managed keyring file every read ``stat``s the file and rebuilds the
keyring only when the file changed; with static keys the keyring is built once. This prints,
in the same run on the same machine:

- the cost of one ``ctx.keyring`` read with a managed file that has not changed, against the
  baseline of a context holding a fixed keyring (what every read cost before live rotation);
- the cost of the read that follows a rotation (re-parse and rebuild), against a wrap;
- a data key wrapped with the local key, for scale (a step does one or two of these).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.keyring import (
    KeyEntry,
    KeyringDocument,
    WrapContext,
    generate_domain_key,
    new_data_key,
    write_keyring_document,
)

EU = Domain.EU


def _config(keyring_file: Path) -> object:
    return parse_config({
        "development": True,
        "domains": {"eu": {
            "aws_region": "eu-central-1", "s3_bucket": "b", "gcp_location": "europe-west3",
            "gcs_bucket": "g", "keyring": {"file": str(keyring_file), "wrappers": ["local"]}}},
    }, origin="bench", env={})


def _doc(n: int) -> KeyringDocument:
    now = datetime.now(UTC)
    keys = [KeyEntry(id=f"eu-{i}", wrapper="local", created_at=now, current=(i == n - 1),
                     material=generate_domain_key()) for i in range(n)]
    return KeyringDocument(domain=EU, keys=tuple(keys))


def _per_call(fn: object, calls: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eu.keyring.json"
        write_keyring_document(path, _doc(3))
        config = _config(path)
        managed = DomainContext(config, EU)  # type: ignore[arg-type]
        fixed = DomainContext(config, EU, keyring=managed.keyring)  # type: ignore[arg-type]

        baseline = _per_call(lambda: fixed.keyring, args.calls)
        unchanged = _per_call(lambda: managed.keyring, args.calls)

        rotations = 200

        def rotated() -> None:
            write_keyring_document(path, _doc(3))
            managed.keyring  # noqa: B018 - the read that rebuilds

        write_cost = _per_call(lambda: write_keyring_document(path, _doc(3)), rotations)
        after_rotation = _per_call(rotated, rotations) - write_cost
        key = new_data_key()
        context = WrapContext(EU, "eu.accounts.20261130T000000Z.00000000", "data-key")
        wrap = _per_call(lambda: managed.keyring.wrap(key, context), 20_000)

    result = {
        "calls": args.calls,
        "fixed_keyring_read_us": baseline * 1e6,
        "managed_keyring_read_us": unchanged * 1e6,
        "managed_vs_fixed_ratio": unchanged / baseline,
        "read_after_rotation_us": after_rotation * 1e6,
        "wrap_us": wrap * 1e6,
        "managed_read_vs_wrap_ratio": unchanged / wrap,
    }
    print(f"ctx.keyring, fixed keyring (baseline):    {baseline * 1e6:8.3f} us")
    print(f"ctx.keyring, managed file, unchanged:     {unchanged * 1e6:8.3f} us "
          f"({unchanged / baseline:.1f}x baseline; one stat)")
    print(f"ctx.keyring, first read after a rotation: {after_rotation * 1e6:8.3f} us "
          "(parse and rebuild)")
    print(f"wrap one data key (local AES-GCM):        {wrap * 1e6:8.3f} us "
          f"(an unchanged read is {unchanged / wrap:.2f}x of it)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
