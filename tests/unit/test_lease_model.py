"""A model test of ownership: over every interleaving of two would-be owners, the lease and
the fenced spool never let two owners write.

Each owner runs the program a step runs: take the lease (with the spool's fence as floor) and
record its token in the spool's fence, then commit spool files with its token. Between any
two of their actions the world may move: the clock passes a whole lease lifetime (a paused
or partitioned owner), or the lease store loses everything (a broker restarted without
persistence). Every interleaving of those events is tried, and for each one:

- at no moment do two owners hold a live lease;
- once a file was committed with token t, no commit with a token below t is accepted;
- a commit is accepted only from the owner with the highest token granted so far, so the
  owner that was taken over can never overwrite the new owner's work.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from regionvault.errors import LeaseLost
from regionvault.lease import Lease, MemoryLeaseStore
from regionvault.spool import Spool

BACKUP = "eu.accounts.20261128T020000Z.0000000a"
TTL_MS = 1000

# Each owner: acquire, then two commits. The world: expire leases, lose the lease store.
PROGRAM = ("acquire", "write", "write")
WORLD = ("expire", "forget")


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Owner:
    name: str
    pc: int = 0
    lease: Lease | None = None
    accepted: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.pc >= len(PROGRAM)


def interleavings() -> Iterator[tuple[str, ...]]:
    """Every order of A's and B's program steps, with up to two world events anywhere."""
    steps = ["A"] * len(PROGRAM) + ["B"] * len(PROGRAM)
    orders = {tuple(p) for p in itertools.permutations(steps)}
    for order in sorted(orders):
        for count in range(3):
            for events in itertools.product(WORLD, repeat=count):
                for places in itertools.combinations_with_replacement(
                        range(len(order) + 1), count):
                    seq = list(order)
                    for offset, (place, event) in enumerate(zip(places, events, strict=True)):
                        seq.insert(place + offset, event)
                    yield tuple(seq)


def run(schedule: tuple[str, ...], tmp: Path) -> tuple[list[tuple[str, int]], list[str]]:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    spool = Spool(tmp)
    owners = {"A": Owner("A"), "B": Owner("B")}
    commits: list[tuple[str, int]] = []
    granted: list[int] = []
    violations: list[str] = []
    for event in schedule:
        if event == "expire":
            clock.now += 2 * TTL_MS / 1000
            continue
        if event == "forget":
            store.forget_everything()
            continue
        owner = owners[event]
        if owner.done:
            continue  # it stepped aside earlier: its remaining program is not run
        action = PROGRAM[owner.pc]
        owner.pc += 1
        if action == "acquire":
            got = store.acquire(BACKUP, owner.name, TTL_MS, step="dump", run=1,
                                floor=spool.fence(BACKUP))
            if isinstance(got, Lease):
                owner.lease = got
                granted.append(got.token)
                spool.advance_fence(BACKUP, got.token)  # as the runner does on taking over
            else:
                owner.pc = len(PROGRAM)  # steps aside: a duplicate never writes
            holders = [o for o in owners.values()
                       if o.lease is not None and _live(store, o.lease)]
            if len(holders) > 1:
                violations.append(f"two live leases after {event} acquired")
        elif action == "write" and owner.lease is not None:
            try:
                spool.write_bytes(BACKUP, "dump.json", owner.name.encode(), owner.lease.token)
            except LeaseLost:
                continue
            commits.append((owner.name, owner.lease.token))
            if owner.lease.token != max(granted):
                violations.append(f"{owner.name} committed with token {owner.lease.token} "
                                  f"after token {max(granted)} was granted")
    tokens = [t for _, t in commits]
    if tokens != sorted(tokens):
        violations.append(f"commit tokens went backwards: {tokens}")
    return commits, violations


def _live(store: MemoryLeaseStore, lease: Lease) -> bool:
    holder = store.holder(lease.backup_id)
    return holder is not None and holder.token == lease.token


def test_no_interleaving_lets_two_owners_write(tmp_path: Path) -> None:
    tried = 0
    contested = 0
    for i, schedule in enumerate(interleavings()):
        directory = tmp_path / str(i)
        commits, violations = run(schedule, directory)
        assert not violations, (schedule, violations)
        tried += 1
        contested += len({name for name, _ in commits}) == 2
    # the model really explored takeovers, not only polite turns
    assert tried > 1000
    assert contested > 50


def test_the_fence_is_what_stops_the_old_owner(tmp_path: Path) -> None:
    """Without the fence check, a paused owner would overwrite its successor: the same
    schedule that the model accepts above must be refused by the spool here."""
    clock = Clock()
    store = MemoryLeaseStore(clock)
    spool = Spool(tmp_path)
    a = store.acquire(BACKUP, "A", TTL_MS, step="dump", run=1)
    assert isinstance(a, Lease)
    clock.now += 2  # A is paused past its lease
    b = store.acquire(BACKUP, "B", TTL_MS, step="dump", run=1, floor=spool.fence(BACKUP))
    assert isinstance(b, Lease) and b.token > a.token
    spool.advance_fence(BACKUP, b.token)
    with pytest.raises(LeaseLost, match="older"):  # refused even before B's first write
        spool.write_bytes(BACKUP, "dump.json", b"A", a.token)
    spool.write_bytes(BACKUP, "dump.json", b"B", b.token)
    with pytest.raises(LeaseLost, match="older"):
        spool.write_bytes(BACKUP, "dump.json", b"A", a.token)
    assert spool.read_bytes(BACKUP, "dump.json") == b"B"
    assert not list(spool.dir_for(BACKUP).glob("*.partial"))  # the refused write left nothing


def test_tokens_stay_monotonic_after_the_lease_store_forgets(tmp_path: Path) -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    spool = Spool(tmp_path)
    first = store.acquire(BACKUP, "A", TTL_MS, step="dump", run=1)
    assert isinstance(first, Lease)
    spool.write_bytes(BACKUP, "dump.json", b"A", first.token)
    store.forget_everything()  # a broker restart without persistence
    second = store.acquire(BACKUP, "B", TTL_MS, step="dump", run=1, floor=spool.fence(BACKUP))
    assert isinstance(second, Lease) and second.token > first.token


def test_renew_and_release_only_with_the_current_token() -> None:
    clock = Clock()
    store = MemoryLeaseStore(clock)
    a = store.acquire(BACKUP, "A", TTL_MS, step="upload", run=1)
    assert isinstance(a, Lease)
    clock.now += 2
    b = store.acquire(BACKUP, "B", TTL_MS, step="upload", run=2)
    assert isinstance(b, Lease)
    assert not store.renew(a, TTL_MS)
    store.release(a)  # the old owner's release must not drop the new owner's lease
    holder = store.holder(BACKUP)
    assert holder is not None and holder.owner == "B"
    assert store.renew(b, TTL_MS)
