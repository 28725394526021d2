"""One pass over the data: while a real chain runs on the real workers, the spool never holds
much more than the compressed, encrypted object (C bytes), although the dump is several
times larger (P bytes).

The spool is sampled from this process every few milliseconds while the domain's worker runs
the chain. The older two-pass chain kept the whole dump (P) and the object (C) side by side
during encrypt, a peak of P + C: on this data well over 3 C, which the samples catch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import BackupRef
from regionvault.manifest_store import keys_of, read_manifest
from tests.integration.helpers import config_of, context, run_chain

DOMAIN = Domain.AU
SOURCE = "bulk"
#: about 30 MB of COPY text that zstd squeezes about 3:1 (hex digests, words, numbers)
FILL_SQL = """
    INSERT INTO readings
    SELECT i, 'sensor-' || (i % 500),
           md5(i::text) || ' reading ' || (i % 97) || ' of batch ' || (i / 1000) || ' ' ||
           repeat('steady ', 1 + i % 5) || md5((i % 1000)::text)
    FROM generate_series(11, 300000) AS i;
"""
#: what may sit beside the object: dump.json or the draft manifest, the fence and lock files
SMALL_FILES = 64 * 1024


def spool_size(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue  # renamed or removed between listing and stat
    return total


@contextmanager
def sampled(root: Path, every: float = 0.002) -> Iterator[list[int]]:
    """Sample the size of everything under ``root`` until the block ends."""
    samples: list[int] = []
    stop = threading.Event()

    def sample_loop() -> None:
        while not stop.is_set():
            samples.append(spool_size(root))
            time.sleep(every)

    thread = threading.Thread(target=sample_loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def test_the_spool_never_holds_much_more_than_the_object(stack: DevStack) -> None:
    assert stack.postgres is not None
    db = sample.database_name(DOMAIN, SOURCE)
    stack.postgres.execute(db, FILL_SQL)
    config = config_of(stack)
    spool_root = config.spool_for(DOMAIN)

    with sampled(spool_root) as samples:
        backup_id = run_chain(stack, DOMAIN, SOURCE, timeout=300)

    ctx = context(stack, DOMAIN)
    ref = BackupRef.parse(backup_id)
    _, mkey = keys_of(ref, config.source(DOMAIN, SOURCE))
    manifest = read_manifest(ctx, ctx.s3, mkey)
    assert manifest is not None and manifest.verified
    plain, cipher = manifest.plaintext_size, manifest.ciphertext_size
    assert plain > 3 * cipher, f"the data should compress about 3:1, got {plain} -> {cipher}"
    peak = max(samples)
    # The samples must have seen the object (it sits whole in the spool from the end of dump
    # to verify), or this test would prove nothing.
    assert peak >= cipher, f"the sampler never saw the whole object: peak {peak}, C {cipher}"
    assert peak <= 1.05 * cipher + SMALL_FILES, (
        f"the spool held {peak} bytes for a backup of C = {cipher} bytes (P = {plain}): "
        f"{peak / cipher:.2f} C")
    assert manifest.row_counts == {"public.readings": 300000}
    assert spool_size(spool_root / backup_id) == 0  # verify left nothing behind
