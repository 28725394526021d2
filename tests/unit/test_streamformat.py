"""The chunked AES-256-GCM stream: round trips, and every kind of tampering is an IntegrityError."""

from __future__ import annotations

import io
import os
import struct

import pytest

from regionvault.errors import IntegrityError
from regionvault.streamformat import (
    MAGIC,
    TAG_BYTES,
    DecryptingReader,
    EncryptingWriter,
    decrypt_chunks,
    read_header,
)

CHUNK = 64
SEALED = CHUNK + TAG_BYTES
KEY = bytes(range(32))
CONTEXT = b"regionvault/v1|backup-stream|eu|eu.accounts.20261128T020000Z.1a2b3c4d"
HEADER_LEN = struct.calcsize(">4sI7sH") + len(CONTEXT)


def plaintext(size: int) -> bytes:
    """Distinct bytes per position, so a reordered or shifted chunk never looks right."""
    return bytes((i * 7 + i // 256) % 251 for i in range(size))


def encrypt(data: bytes, *, pieces: int = 1, key: bytes = KEY, context: bytes = CONTEXT) -> bytes:
    sink = io.BytesIO()
    with EncryptingWriter(sink, key, context, chunk_size=CHUNK) as writer:
        step = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), step):
            writer.write(data[start:start + step])
    return sink.getvalue()


def decrypt(blob: bytes, *, key: bytes = KEY, context: bytes = CONTEXT) -> bytes:
    return b"".join(decrypt_chunks(io.BytesIO(blob), key, context))


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(header, sealed chunks) of a stream made with CHUNK."""
    body = blob[HEADER_LEN:]
    return blob[:HEADER_LEN], [body[i:i + SEALED] for i in range(0, len(body), SEALED)]


def flip_bit(blob: bytes, bit: int) -> bytes:
    data = bytearray(blob)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


ROUND_TRIP_SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17, 10 * CHUNK]


@pytest.mark.parametrize("size", ROUND_TRIP_SIZES)
def test_round_trip(size: int) -> None:
    data = plaintext(size)
    assert decrypt(encrypt(data)) == data


@pytest.mark.parametrize("size", ROUND_TRIP_SIZES)
def test_chunk_layout(size: int) -> None:
    """Every sealed chunk is full except the last, which holds 0..CHUNK bytes."""
    blob = encrypt(plaintext(size))
    _, sealed = chunks_of(blob)
    expected_chunks = max(1, -(-size // CHUNK))
    assert len(sealed) == expected_chunks
    assert all(len(c) == SEALED for c in sealed[:-1])
    assert len(sealed[-1]) == size - (expected_chunks - 1) * CHUNK + TAG_BYTES
    yielded = list(decrypt_chunks(io.BytesIO(blob), KEY, CONTEXT))
    assert [len(c) for c in yielded] == [len(c) - TAG_BYTES for c in sealed]


@pytest.mark.parametrize("pieces", [1, 2, 7, 300])
def test_writes_in_any_pieces_give_the_same_plaintext(pieces: int) -> None:
    data = plaintext(3 * CHUNK + 5)
    blob = encrypt(data, pieces=pieces)
    assert len(blob) == HEADER_LEN + 3 * SEALED + 5 + TAG_BYTES
    assert decrypt(blob) == data


def test_ciphertext_hides_the_plaintext_and_differs_per_stream() -> None:
    data = b"SECRET-ROW-" * 40
    first, second = encrypt(data), encrypt(data)
    assert b"SECRET-ROW-" not in first
    assert first != second  # fresh nonce prefix per stream


def test_read_header_reports_chunk_size_and_context() -> None:
    blob = encrypt(plaintext(10))
    chunk_size, prefix, context, header = read_header(io.BytesIO(blob))
    assert (chunk_size, context, len(prefix)) == (CHUNK, CONTEXT, 7)
    assert header == blob[:HEADER_LEN]
    assert header.startswith(MAGIC)


@pytest.mark.parametrize("read_size", [-1, 1, 5, CHUNK, CHUNK + 3, 1000])
def test_decrypting_reader_round_trip(read_size: int) -> None:
    data = plaintext(4 * CHUNK + 9)
    reader = DecryptingReader(io.BytesIO(encrypt(data)), KEY, CONTEXT)
    out = bytearray()
    while piece := reader.read(read_size):
        if read_size > 0:
            assert len(piece) <= read_size
        out += piece
    assert bytes(out) == data
    assert reader.read(10) == b""


def test_write_after_close_is_refused() -> None:
    writer = EncryptingWriter(io.BytesIO(), KEY, CONTEXT, chunk_size=CHUNK)
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")


# --- tampering -------------------------------------------------------------------------------

THREE_CHUNKS = plaintext(2 * CHUNK + 20)


def test_flipped_bit_in_header_magic_is_bad_magic() -> None:
    with pytest.raises(IntegrityError, match="bad magic"):
        decrypt(flip_bit(encrypt(THREE_CHUNKS), 3))


@pytest.mark.parametrize(
    "bit",
    [
        pytest.param(4 * 8 + 31, id="chunk-size"),
        pytest.param(8 * 8, id="nonce-prefix"),
        pytest.param(15 * 8 + 0, id="context-length"),
        pytest.param((HEADER_LEN - 1) * 8, id="context"),
        pytest.param((HEADER_LEN + 10) * 8 + 2, id="chunk-0-body"),
        pytest.param((HEADER_LEN + SEALED + 5) * 8, id="chunk-1-body"),
        pytest.param((HEADER_LEN + SEALED - 1) * 8 + 7, id="chunk-0-tag"),
        pytest.param((HEADER_LEN + 2 * SEALED + 20 + 3) * 8, id="last-chunk-tag"),
    ],
)
def test_one_flipped_bit_is_detected(bit: int) -> None:
    blob = encrypt(THREE_CHUNKS)
    assert decrypt(blob) == THREE_CHUNKS
    with pytest.raises(IntegrityError):
        decrypt(flip_bit(blob, bit))


def test_every_single_bit_flip_anywhere_is_detected() -> None:
    blob = encrypt(THREE_CHUNKS)
    undetected = []
    for bit in range(len(blob) * 8):
        try:
            decrypt(flip_bit(blob, bit))
        except IntegrityError:
            continue
        undetected.append(bit)
    assert undetected == []


@pytest.mark.parametrize(
    "length",
    [
        pytest.param(0, id="empty"),
        pytest.param(10, id="inside-fixed-header"),
        pytest.param(HEADER_LEN - 1, id="inside-context"),
        pytest.param(HEADER_LEN, id="header-only"),
        pytest.param(HEADER_LEN + SEALED, id="after-chunk-0"),
        pytest.param(HEADER_LEN + 2 * SEALED, id="after-chunk-1-drops-last-chunk"),
        pytest.param(HEADER_LEN + SEALED // 2, id="mid-chunk-0"),
        pytest.param(HEADER_LEN + SEALED + 3, id="mid-chunk-1"),
        pytest.param(HEADER_LEN + 2 * SEALED + 20 + TAG_BYTES - 1, id="inside-last-tag"),
    ],
)
def test_truncation_is_detected(length: int) -> None:
    blob = encrypt(THREE_CHUNKS)
    assert length < len(blob)
    with pytest.raises(IntegrityError):
        decrypt(blob[:length])


@pytest.mark.parametrize("size", [CHUNK, 2 * CHUNK, 3 * CHUNK, 3 * CHUNK + 1])
def test_every_proper_prefix_is_rejected(size: int) -> None:
    blob = encrypt(plaintext(size))
    accepted = []
    for length in range(len(blob)):
        try:
            decrypt(blob[:length])
        except IntegrityError:
            continue
        accepted.append(length)
    assert accepted == []


def test_dropping_a_full_last_chunk_is_detected() -> None:
    """A stream of exactly two full chunks, cut to one: the final flag catches it."""
    blob = encrypt(plaintext(2 * CHUNK))
    header, sealed = chunks_of(blob)
    assert [len(c) for c in sealed] == [SEALED, SEALED]
    with pytest.raises(IntegrityError):
        decrypt(header + sealed[0])


@pytest.mark.parametrize("extra", [b"x", b"y" * SEALED, b"z" * (SEALED + 1)])
@pytest.mark.parametrize("size", [CHUNK + 20, 2 * CHUNK])
def test_appended_bytes_are_detected(size: int, extra: bytes) -> None:
    with pytest.raises(IntegrityError):
        decrypt(encrypt(plaintext(size)) + extra)


def test_reordered_chunks_are_detected() -> None:
    header, sealed = chunks_of(encrypt(plaintext(3 * CHUNK + 5)))
    with pytest.raises(IntegrityError, match="chunk 0"):
        decrypt(header + sealed[1] + sealed[0] + sealed[2] + sealed[3])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_duplicated_chunk_is_detected(index: int) -> None:
    header, sealed = chunks_of(encrypt(THREE_CHUNKS))
    duplicated = [*sealed[: index + 1], sealed[index], *sealed[index + 1:]]
    with pytest.raises(IntegrityError):
        decrypt(header + b"".join(duplicated))


def test_chunk_from_another_stream_is_detected() -> None:
    """Same key and context, different stream: the nonce prefix and header differ."""
    header, sealed = chunks_of(encrypt(THREE_CHUNKS))
    _, other = chunks_of(encrypt(THREE_CHUNKS))
    with pytest.raises(IntegrityError, match="chunk 1"):
        decrypt(header + sealed[0] + other[1] + sealed[2])


def test_wrong_key_is_detected() -> None:
    with pytest.raises(IntegrityError, match="chunk 0"):
        decrypt(encrypt(THREE_CHUNKS), key=os.urandom(32))


def test_wrong_expected_context_is_detected_before_any_chunk() -> None:
    other = CONTEXT.replace(b"|eu|", b"|us|")
    chunks = decrypt_chunks(io.BytesIO(encrypt(THREE_CHUNKS)), KEY, other)
    with pytest.raises(IntegrityError, match="another backup"):
        next(chunks)


def test_bad_magic_is_detected() -> None:
    blob = b"XXXX" + encrypt(THREE_CHUNKS)[4:]
    with pytest.raises(IntegrityError, match="bad magic"):
        decrypt(blob)
    with pytest.raises(IntegrityError, match="bad magic"):
        read_header(io.BytesIO(blob))


def test_zero_chunk_size_in_header_is_malformed() -> None:
    blob = bytearray(encrypt(THREE_CHUNKS))
    blob[4:8] = struct.pack(">I", 0)
    with pytest.raises(IntegrityError, match="malformed"):
        decrypt(bytes(blob))


def test_nothing_is_yielded_from_a_bad_chunk() -> None:
    """Tamper chunk 2 of 3: only chunks 0 and 1 come out, and they are correct."""
    blob = bytearray(encrypt(THREE_CHUNKS))
    blob[HEADER_LEN + 2 * SEALED + 4] ^= 0x01
    got: list[bytes] = []
    with pytest.raises(IntegrityError, match="chunk 2"):
        for chunk in decrypt_chunks(io.BytesIO(bytes(blob)), KEY, CONTEXT):
            got.append(chunk)
    assert got == [THREE_CHUNKS[:CHUNK], THREE_CHUNKS[CHUNK:2 * CHUNK]]


def test_decrypting_reader_raises_on_tampering() -> None:
    blob = bytearray(encrypt(THREE_CHUNKS))
    blob[HEADER_LEN + 2 * SEALED + 4] ^= 0x01
    reader = DecryptingReader(io.BytesIO(bytes(blob)), KEY, CONTEXT)
    assert reader.read(CHUNK) == THREE_CHUNKS[:CHUNK]
    with pytest.raises(IntegrityError):
        reader.read()
