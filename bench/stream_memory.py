"""Benchmark: memory and speed of the backup stream (zstd + chunked AES-256-GCM + digests)
against a baseline that only hashes the same bytes, for growing sizes.

Run by hand: `.venv/bin/python bench/stream_memory.py [MiB ...]`. Each measurement runs in a
fresh child process, so peak RSS (ru_maxrss) belongs to that one pass. The claim under test:
memory stays flat as the input grows (bounded by the chunk size), and the stream costs a
small constant factor of the baseline's time.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time

CHUNK = 1024 * 1024


def _source(mib: int) -> io.BufferedReader:
    """Half-compressible input (random bytes, then zeros, per MiB), like a dump of tables;
    both modes pay the same cost to make it."""

    class Source(io.RawIOBase):
        def __init__(self) -> None:
            self.left = mib * CHUNK

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), self.left, CHUNK)
            piece = (os.urandom(CHUNK // 2) + bytes(CHUNK // 2))[:n]
            buffer[:n] = piece
            self.left -= n
            return n

    return io.BufferedReader(Source(), CHUNK)


def _child(mode: str, mib: int) -> None:
    import zstandard

    from regionvault.checksums import StreamDigest
    from regionvault.streamformat import EncryptingWriter, decrypt_chunks

    src = _source(mib)
    started = time.perf_counter()
    if mode == "baseline":
        digest = StreamDigest()
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    else:
        key = os.urandom(32)
        plain, cipher = StreamDigest(), StreamDigest()

        class Sink:
            def write(self, data: bytes) -> int:
                cipher.update(data)
                return len(data)

        encryptor = EncryptingWriter(Sink(), key, b"bench")  # type: ignore[arg-type]
        compressor = zstandard.ZstdCompressor(level=3).stream_writer(
            encryptor, closefd=False)  # type: ignore[arg-type]
        while chunk := src.read(CHUNK):
            plain.update(chunk)
            compressor.write(chunk)
        compressor.close()
        encryptor.close()
        assert decrypt_chunks  # imported for the same import cost as the real worker
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024}))


def _measure(mode: str, mib: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(mib)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main(sizes: list[int]) -> None:
    print(f"{'MiB':>6} {'base s':>8} {'stream s':>9} {'time x':>7} "
          f"{'base MiB':>9} {'stream MiB':>11} {'mem x':>6}")
    for mib in sizes:
        base, stream = _measure("baseline", mib), _measure("stream", mib)
        print(f"{mib:>6} {base['seconds']:>8.2f} {stream['seconds']:>9.2f} "
              f"{stream['seconds'] / base['seconds']:>7.2f} {base['peak_mib']:>9.1f} "
              f"{stream['peak_mib']:>11.1f} {stream['peak_mib'] / base['peak_mib']:>6.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        main([int(a) for a in sys.argv[1:]] or [64, 512, 2048])
