"""Backup leases: at most one owner per backup, each with a fencing token.

A step that works on a backup first takes the backup's lease, renews it while it works
(``Heartbeat``) and releases it when done. Every grant hands out a new fencing token, larger
than any token granted for that backup before; whoever writes the backup's spool files or
manifests writes with its token, and a write with an older token is refused
(``regionvault.spool.Spool.atomic_write``). So an owner that was paused or partitioned and wakes
up after its lease expired cannot damage the work of the owner that took over (Kleppmann,
"How to do distributed locking").

A lease that is not renewed expires after its TTL: that is how a dead owner is noticed, in
seconds to minutes, without waiting for the broker's visibility timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from regionvault.errors import LeaseLost

log = logging.getLogger("regionvault.lease")

#: the fence counter outlives the lease by far: a token must never be handed out twice
FENCE_TTL_SECONDS = 35 * 24 * 3600


@dataclass(frozen=True)
class Lease:
    """A granted lease: who owns which backup, with which token, for which step."""

    backup_id: str
    owner: str
    token: int
    step: str
    run: int


@dataclass(frozen=True)
class Holder:
    """Who holds a backup's lease right now, as seen by someone else."""

    owner: str
    token: int
    step: str
    run: int
    #: milliseconds until the lease expires unless renewed
    ttl_ms: int


def owner_id(task_id: str) -> str:
    """``host/pid/task``: enough to tell, on the same host, whether the owner still lives."""
    return f"{socket.gethostname()}/{os.getpid()}/{task_id}"


def owner_is_dead_here(owner: str) -> bool:
    """True only when ``owner`` is a process of this host that no longer exists (a pool child
    killed a moment ago): its lease can be broken at once instead of waiting for the TTL."""
    host, _, rest = owner.partition("/")
    pid_text = rest.split("/", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseStore(Protocol):
    """Where leases live. Contract (every implementation MUST):

    - ``acquire(backup_id, owner, ttl_ms, *, step, run, floor)``: atomically grant the lease
      if nobody holds it (or ``owner`` itself does) and return the ``Lease`` with a token
      larger than every token granted for this backup before and larger than ``floor`` (the
      highest token the spool has seen, so tokens stay monotonic even after the lease store
      lost its data); otherwise return the current ``Holder`` and grant nothing.
    - ``renew(lease, ttl_ms)``: extend the lease only if ``lease.token`` is still current;
      False means the lease is lost and the caller must stop writing.
    - ``release(lease)``: drop the lease only if ``lease.token`` is still current.
    - ``holder(backup_id)``: the current holder, or None.
    - ``break_lease(backup_id, token)``: drop the lease only if its token is ``token`` (used
      when its owner is known dead); True if it did.
    - Errors of the store itself are ``redis.RedisError`` (or the implementation's own) and
      are the caller's to handle: never treated as a grant.
    """

    def acquire(self, backup_id: str, owner: str, ttl_ms: int, *, step: str, run: int,
                floor: int = 0) -> Lease | Holder: ...

    def renew(self, lease: Lease, ttl_ms: int) -> bool: ...

    def release(self, lease: Lease) -> None: ...

    def holder(self, backup_id: str) -> Holder | None: ...

    def break_lease(self, backup_id: str, token: int) -> bool: ...


_LEASE = "regionvault:lease:{}"
_FENCE = "regionvault:fence:{}"

_ACQUIRE = """
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] then
  return {0, cur, redis.call('HGET', KEYS[1], 'token'), redis.call('HGET', KEYS[1], 'step'),
          redis.call('HGET', KEYS[1], 'run'), redis.call('PTTL', KEYS[1])}
end
local token = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[3])
if token < floor then token = floor end
token = token + 1
redis.call('SET', KEYS[2], token, 'EX', ARGV[6])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'step', ARGV[4], 'run', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, ARGV[1], tostring(token), ARGV[4], ARGV[5], tonumber(ARGV[2])}
"""

_RENEW = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_DROP_IF_TOKEN = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeaseStore:
    """Leases in a Redis-protocol server (the result backend of the domain)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis: Any = client
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._drop = self._redis.register_script(_DROP_IF_TOKEN)

    @classmethod
    def from_url(cls, url: str) -> RedisLeaseStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                        socket_connect_timeout=5))

    def acquire(self, backup_id: str, owner: str, ttl_ms: int, *, step: str, run: int,
                floor: int = 0) -> Lease | Holder:
        granted, who, token, held_step, held_run, ttl = self._acquire(
            keys=[_LEASE.format(backup_id), _FENCE.format(backup_id)],
            args=[owner, ttl_ms, floor, step, run, FENCE_TTL_SECONDS])
        if int(granted):
            return Lease(backup_id=backup_id, owner=owner, token=int(token), step=step, run=run)
        return Holder(owner=str(who), token=int(token or 0), step=str(held_step or ""),
                      run=int(held_run or 0), ttl_ms=int(ttl))

    def renew(self, lease: Lease, ttl_ms: int) -> bool:
        return bool(int(self._renew(keys=[_LEASE.format(lease.backup_id)],
                                    args=[lease.token, ttl_ms])))

    def release(self, lease: Lease) -> None:
        self._drop(keys=[_LEASE.format(lease.backup_id)], args=[lease.token])

    def holder(self, backup_id: str) -> Holder | None:
        key = _LEASE.format(backup_id)
        pipe = self._redis.pipeline()
        pipe.hgetall(key)
        pipe.pttl(key)
        data, ttl = pipe.execute()
        if not data:
            return None
        return Holder(owner=data.get("owner", ""), token=int(data.get("token", 0)),
                      step=data.get("step", ""), run=int(data.get("run", 0)), ttl_ms=int(ttl))

    def break_lease(self, backup_id: str, token: int) -> bool:
        return bool(int(self._drop(keys=[_LEASE.format(backup_id)], args=[token])))


class MemoryLeaseStore:
    """Leases in this process, with a clock of its own: for unit and model tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, tuple[Lease, float]] = {}
        self._fence: dict[str, int] = {}
        self._lock = threading.Lock()

    def _live(self, backup_id: str) -> tuple[Lease, float] | None:
        entry = self._held.get(backup_id)
        if entry is not None and entry[1] <= self._clock():
            del self._held[backup_id]
            return None
        return entry

    def acquire(self, backup_id: str, owner: str, ttl_ms: int, *, step: str, run: int,
                floor: int = 0) -> Lease | Holder:
        with self._lock:
            entry = self._live(backup_id)
            if entry is not None and entry[0].owner != owner:
                held, until = entry
                return Holder(owner=held.owner, token=held.token, step=held.step, run=held.run,
                              ttl_ms=int((until - self._clock()) * 1000))
            token = max(self._fence.get(backup_id, 0), floor) + 1
            self._fence[backup_id] = token
            lease = Lease(backup_id=backup_id, owner=owner, token=token, step=step, run=run)
            self._held[backup_id] = (lease, self._clock() + ttl_ms / 1000)
            return lease

    def renew(self, lease: Lease, ttl_ms: int) -> bool:
        with self._lock:
            entry = self._live(lease.backup_id)
            if entry is None or entry[0].token != lease.token:
                return False
            self._held[lease.backup_id] = (entry[0], self._clock() + ttl_ms / 1000)
            return True

    def release(self, lease: Lease) -> None:
        with self._lock:
            entry = self._held.get(lease.backup_id)
            if entry is not None and entry[0].token == lease.token:
                del self._held[lease.backup_id]

    def holder(self, backup_id: str) -> Holder | None:
        with self._lock:
            entry = self._live(backup_id)
            if entry is None:
                return None
            held, until = entry
            return Holder(owner=held.owner, token=held.token, step=held.step, run=held.run,
                          ttl_ms=int((until - self._clock()) * 1000))

    def break_lease(self, backup_id: str, token: int) -> bool:
        with self._lock:
            entry = self._held.get(backup_id)
            if entry is not None and entry[0].token == token:
                del self._held[backup_id]
                return True
            return False

    def forget_everything(self) -> None:
        """What a lease store restarted without persistence looks like."""
        with self._lock:
            self._held.clear()
            self._fence.clear()


class Ownership:
    """What a step holds while it writes a backup: the token to write with, and a check that
    it still owns the backup. ``UNOWNED`` (token 0) serves code that runs without leases
    (unit tests, ``--local`` operator commands): its writes are refused as soon as any leased
    owner has written the same backup's spool."""

    def __init__(self, token: int = 0, confirm: Callable[[], None] | None = None) -> None:
        self.token = token
        self._confirm = confirm

    def confirm(self) -> None:
        """Raise ``LeaseLost`` unless this process still owns the backup."""
        if self._confirm is not None:
            self._confirm()


UNOWNED = Ownership()


class Heartbeat:
    """Renews a lease in a background thread until stopped; remembers if it was lost.

    A renewal that cannot reach the lease store is tried again at the next beat; once the
    lease's whole TTL has passed without a successful renewal, the lease counts as lost (by
    then another owner may hold it)."""

    def __init__(self, store: LeaseStore, lease: Lease, ttl_ms: int) -> None:
        self._store = store
        self.lease = lease
        self._ttl_ms = ttl_ms
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.backup_id}",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = max(self._ttl_ms / 1000 / 3, 0.2)
        while not self._stop.wait(interval):
            self.beat()

    def beat(self) -> None:
        try:
            if self._store.renew(self.lease, self._ttl_ms):
                self._last_ok = time.monotonic()
                return
            log.warning("lease of %s (token %d) was taken over", self.lease.backup_id,
                        self.lease.token)
            self._lost.set()
        except redis.RedisError as exc:
            if time.monotonic() - self._last_ok > self._ttl_ms / 1000:
                log.warning("lease of %s could not be renewed for a whole TTL (%s)",
                            self.lease.backup_id, exc)
                self._lost.set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def confirm(self) -> None:
        if self.lost:
            raise LeaseLost(
                f"backup {self.lease.backup_id}: this process lost its lease (token "
                f"{self.lease.token}) to another owner; it stops without writing more")

    def ownership(self) -> Ownership:
        return Ownership(self.lease.token, self.confirm)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
