"""The backup journal: where each backup's chain is, step by step, for people to read.

The stores are the catalogue of finished backups; the journal tells what happens before and
around that: which step runs, which failed and why, which task ids carry the chain, who
retried or cancelled it. It holds states and short messages only, never data or secrets, in
the result backend's Redis (one hash per backup, one sorted set per domain), and expires
after ``TTL_SECONDS``. Losing it loses history, never a backup: retry and status fall back
to the manifests in the stores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import uuid4

import redis

from regionvault.domains import Domain
from regionvault.manifest import STEPS, BackupRef, Step

TTL_SECONDS = 35 * 24 * 3600
_KEY = "regionvault:backup:{}"
_INDEX = "regionvault:backups:{}"
_FANOUTS = "regionvault:fanouts:{}"
_MAX_ERROR = 500


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BackupState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FAILED = "failed"
    VERIFIED = "verified"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JournalEntry:
    """One step of a backup as the journal holds it: its state, the task that carries it,
    the last word about it and when that was written."""

    step: Step
    state: StepState = StepState.PENDING
    task_id: str | None = None
    detail: str = ""
    at: datetime | None = None


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    domain: str
    source: str
    state: BackupState
    steps: dict[Step, JournalEntry]
    created_at: datetime
    updated_at: datetime
    error: str = ""
    error_step: Step | None = None
    notes: tuple[str, ...] = field(default=())
    #: the chain run that owns the backup now; a step message of an older run is stale
    run: int = 0
    #: the id of that run's chain (its first task's id), named when a retry is refused
    chain_id: str = ""
    #: the step a failure said must run again ("run step 'dump' again"), if any
    rerun: Step | None = None
    #: how many times the reconciler resumed this backup automatically
    resumes: int = 0
    #: when a step waiting out a transient error will try again
    retry_at: datetime | None = None

    @property
    def in_flight(self) -> bool:
        return self.state in (BackupState.QUEUED, BackupState.RUNNING)

    def first_unfinished(self) -> Step | None:
        """The first step not done, where a retry resumes; None if every step is done."""
        for step in STEPS:
            if self.steps[step].state is not StepState.DONE:
                return step
        return None


@dataclass(frozen=True)
class Claim:
    """The answer to a claim of a backup for a new chain run."""

    accepted: bool
    run: int
    chain_id: str
    #: the backup's state when the claim was refused
    state: str = ""
    #: the backup's trace (a W3C traceparent) if a step of an earlier run started one: the
    #: new run continues it (``regionvault.tracing``); "" for a backup never traced
    trace: str = ""


ClaimMode = Literal["new", "retry", "resume"]

# Claims are atomic: two `regionvault retry` runs, a Flower Retry and the reconciler may all
# try at the same instant, and exactly one of them may start the next run.
_CLAIM = """
local key, index = KEYS[1], KEYS[2]
local mode, now, ttl = ARGV[1], ARGV[4], ARGV[7]
local state = redis.call('HGET', key, 'state')
local run = tonumber(redis.call('HGET', key, 'run') or '0')
local chain = redis.call('HGET', key, 'chain') or ''
local trace = redis.call('HGET', key, 'trace') or ''
if mode == 'new' and redis.call('EXISTS', key) == 1 then
  return {0, run, chain, state or '', trace}
end
if mode == 'retry' and (state == 'queued' or state == 'running' or state == 'cancelled') then
  return {0, run, chain, state, trace}
end
if mode == 'resume' and (run ~= tonumber(ARGV[2]) or state == 'cancelled') then
  return {0, run, chain, state or '', trace}
end
run = run + 1
redis.call('HSETNX', key, 'created_at', now)
redis.call('HSET', key, 'run', run, 'chain', ARGV[3], 'state', 'queued', 'error', '',
           'error_step', '', 'rerun', '', 'retry_at', '', 'updated_at', now,
           'domain', ARGV[5], 'source', ARGV[6])
if mode == 'resume' then redis.call('HINCRBY', key, 'resumes', 1) end
for i = 10, #ARGV do
  redis.call('HSET', key, ARGV[i] .. '.state', 'pending', ARGV[i] .. '.task_id', '',
             ARGV[i] .. '.detail', '')
end
redis.call('EXPIRE', key, ttl)
redis.call('ZADD', index, ARGV[8], ARGV[9])
redis.call('EXPIRE', index, ttl)
return {1, run, ARGV[3], 'queued', trace}
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Journal:
    """Reads and writes the journal in a Redis-protocol server."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py's annotations mix its sync and async clients; this one is sync
        self._redis: Any = client
        self._claim = self._redis.register_script(_CLAIM)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def claim(self, backup_id: str, start_at: Step, *, mode: ClaimMode,
              expected_run: int = 0, at: datetime | None = None) -> Claim:
        """Atomically make a new chain run the backup's owner, from ``start_at`` on.

        ``new``: only if the backup has no journal yet (one schedule slot, one chain).
        ``retry``: unless a chain is queued or running (or the backup was cancelled).
        ``resume`` (the reconciler): only if the run is still ``expected_run``, the one the
        reconciler looked at, so a resumption never races a retry that just started."""
        ref = BackupRef.parse(backup_id)
        when = at or _now()
        later = [s.value for s in STEPS[STEPS.index(start_at):]]
        accepted, run, chain, state, trace = self._claim(
            keys=[_KEY.format(backup_id), _INDEX.format(ref.domain.value)],
            args=[mode, expected_run, str(uuid4()), when.isoformat(), ref.domain.value,
                  ref.source, TTL_SECONDS, when.timestamp(), backup_id, *later])
        return Claim(accepted=bool(int(accepted)), run=int(run), chain_id=str(chain),
                     state=str(state), trace=str(trace))

    def trace_of(self, backup_id: str, step: Step) -> tuple[str, str, str]:
        """(the backup's trace, the span of ``step``'s last attempt, the span of the attempt
        that failed last) as traceparents, "" where there is none: what a traced step
        continues and links to."""
        trace, last, failed = self._redis.hmget(
            _KEY.format(backup_id), ["trace", f"{step.value}.span", "failed_span"])
        return str(trace or ""), str(last or ""), str(failed or "")

    def span_failed(self, backup_id: str, span: str) -> None:
        """``span`` (a step attempt's) failed or will be retried: the next attempt of any
        step, by Celery's retry, ``retry`` or the reconciler, links to it."""
        key = _KEY.format(backup_id)
        pipe = self._redis.pipeline()
        pipe.hset(key, "failed_span", span)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()

    def traced(self, backup_id: str, step: Step, span: str) -> None:
        """``span`` is the span of ``step``'s attempt now; the first span recorded for a
        backup becomes its trace, which every later run continues (no secret: ids only)."""
        key = _KEY.format(backup_id)
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, "trace", span)
        pipe.hset(key, f"{step.value}.span", span)
        pipe.hdel(key, "failed_span")  # linked to by this attempt (``trace_of``)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()

    def fanout_started(self, domain: str, slot: str) -> None:
        """A scheduled fan-out of ``domain`` for ``slot`` began; ``fanout_done`` ends it."""
        key = _FANOUTS.format(domain)
        self._redis.hset(key, slot, _now().isoformat())
        self._redis.expire(key, 7 * 24 * 3600)

    def fanout_done(self, domain: str, slot: str) -> None:
        self._redis.hdel(_FANOUTS.format(domain), slot)

    def fanouts_pending(self, domain: str) -> dict[str, datetime]:
        """Fan-outs that began and never finished (their worker died half-way), by slot."""
        raw: dict[str, str] = self._redis.hgetall(_FANOUTS.format(domain))
        return {slot: datetime.fromisoformat(at) for slot, at in raw.items()}

    def handed_off(self, backup_id: str, step: Step, task_id: str) -> None:
        """The next step's message was sent; it is pending under ``task_id``."""
        self._write(backup_id, {f"{step.value}.state": StepState.PENDING.value,
                                f"{step.value}.task_id": task_id,
                                f"{step.value}.detail": ""}, at=_now())

    def rebuild(self, backup_id: str, steps: Mapping[Step, datetime], *, state: BackupState,
                note: str) -> None:
        """Write a record from what the stores and the spool show (after a journal loss)."""
        fields = {"state": state.value}
        for step, when in steps.items():
            fields[f"{step.value}.state"] = StepState.DONE.value
            fields[f"{step.value}.at"] = when.isoformat()
        self._write(backup_id, fields, at=_now())
        self.note(backup_id, note)

    @classmethod
    def from_url(cls, url: str) -> Journal:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10))

    def _write(self, backup_id: str, fields: Mapping[str, str], *, at: datetime) -> None:
        ref = BackupRef.parse(backup_id)
        key = _KEY.format(backup_id)
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, "created_at", at.isoformat())
        mapping = {"domain": ref.domain.value, "source": ref.source,
                   "updated_at": at.isoformat(), **fields}
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, TTL_SECONDS)
        pipe.zadd(_INDEX.format(ref.domain.value), {backup_id: at.timestamp()})
        pipe.expire(_INDEX.format(ref.domain.value), TTL_SECONDS)
        pipe.execute()

    def queued(self, backup_id: str, task_ids: Mapping[Step, str], *, note: str = "",
               at: datetime | None = None) -> None:
        """A chain (or the rest of one) was sent; its steps are pending again."""
        fields = {"state": BackupState.QUEUED.value, "error": "", "error_step": ""}
        for step, task_id in task_ids.items():
            fields[f"{step.value}.state"] = StepState.PENDING.value
            fields[f"{step.value}.task_id"] = task_id
            fields[f"{step.value}.detail"] = ""
        self._write(backup_id, fields, at=at or _now())
        if note:
            self.note(backup_id, note, at=at)

    def step(self, backup_id: str, step: Step, state: StepState, *, detail: str = "",
             task_id: str | None = None, at: datetime | None = None,
             rerun: Step | None = None, retry_at: datetime | None = None) -> None:
        """Record a step's new state. A cancelled backup stays cancelled: a step killed by
        the cancel reports its death afterwards, and must not make it look failed."""
        if self.is_cancelled(backup_id):
            return
        when = at or _now()
        fields = {f"{step.value}.state": state.value, f"{step.value}.at": when.isoformat(),
                  f"{step.value}.detail": detail[:_MAX_ERROR]}
        if task_id:
            fields[f"{step.value}.task_id"] = task_id
        if state is StepState.FAILED:
            fields.update(state=BackupState.FAILED.value, error=detail[:_MAX_ERROR],
                          error_step=step.value, rerun=rerun.value if rerun else "")
        elif state in (StepState.RUNNING, StepState.RETRYING) and step is not Step.EXPIRE:
            # expire runs after verify: the backup is verified by then, whatever expire does
            fields["state"] = BackupState.RUNNING.value
            fields["retry_at"] = retry_at.isoformat() if retry_at else ""
        elif state is StepState.DONE and step in (Step.VERIFY, Step.EXPIRE):
            # expire runs only after verify: a run resumed at expire ends verified again
            fields["state"] = BackupState.VERIFIED.value
        self._write(backup_id, fields, at=when)

    def cancelled(self, backup_id: str, *, by: str, at: datetime | None = None) -> None:
        when = at or _now()
        record = self.get(backup_id)
        fields = {"state": BackupState.CANCELLED.value}
        if record is not None:
            for step, rec in record.steps.items():
                if rec.state is not StepState.DONE:
                    fields[f"{step.value}.state"] = StepState.CANCELLED.value
        self._write(backup_id, fields, at=when)
        self.note(backup_id, f"cancelled by {by}", at=when)

    def admission(self, backup_id: str) -> tuple[bool, int]:
        """(cancelled?, current run) in one read: what a step checks before it runs."""
        state, run = self._redis.hmget(_KEY.format(backup_id), ["state", "run"])
        return state == BackupState.CANCELLED.value, int(run or 0)

    def is_cancelled(self, backup_id: str) -> bool:
        return self._redis.hget(_KEY.format(backup_id), "state") == BackupState.CANCELLED.value

    def note(self, backup_id: str, text: str, *, at: datetime | None = None) -> None:
        """Who did what, when (retries, cancellations); kept with the backup."""
        when = at or _now()
        key = _KEY.format(backup_id) + ":notes"
        self._redis.rpush(key, f"{when.isoformat()} {text[:_MAX_ERROR]}")
        self._redis.expire(key, TTL_SECONDS)

    def get(self, backup_id: str) -> BackupRecord | None:
        data: dict[str, str] = self._redis.hgetall(_KEY.format(backup_id))
        if not data:
            return None
        notes = self._redis.lrange(_KEY.format(backup_id) + ":notes", 0, -1)
        return _record(backup_id, data, tuple(str(n) for n in notes))

    def recent(self, domain: str | None = None, limit: int = 100) -> list[BackupRecord]:
        """The newest backups first (of one domain, or of all)."""
        domains = [domain] if domain else [d.value for d in Domain]
        ids: list[tuple[float, str]] = []
        for d in domains:
            for member, score in self._redis.zrevrange(_INDEX.format(d), 0, limit - 1,
                                                       withscores=True):
                ids.append((float(score), str(member)))
        ids.sort(reverse=True)
        records = [self.get(bid) for _, bid in ids[:limit]]
        return [r for r in records if r is not None]

    def for_source(self, domain: str, source: str, limit: int = 200) -> list[BackupRecord]:
        return [r for r in self.recent(domain, limit) if r.source == source]


def _record(backup_id: str, data: Mapping[str, str], notes: Iterable[str]) -> BackupRecord:
    steps = {}
    for step in STEPS:
        steps[step] = JournalEntry(
            step=step,
            state=StepState(data.get(f"{step.value}.state", StepState.PENDING.value)),
            task_id=data.get(f"{step.value}.task_id") or None,
            detail=data.get(f"{step.value}.detail", ""),
            at=_parse_time(data.get(f"{step.value}.at")),
        )
    created = _parse_time(data.get("created_at")) or _now()
    error_step = data.get("error_step") or None
    rerun = data.get("rerun") or None
    return BackupRecord(
        backup_id=backup_id, domain=data.get("domain", ""), source=data.get("source", ""),
        state=BackupState(data.get("state", BackupState.QUEUED.value)), steps=steps,
        created_at=created, updated_at=_parse_time(data.get("updated_at")) or created,
        error=data.get("error", ""), error_step=Step(error_step) if error_step else None,
        notes=tuple(notes), run=int(data.get("run") or 0), chain_id=data.get("chain", ""),
        rerun=Step(rerun) if rerun else None, resumes=int(data.get("resumes") or 0),
        retry_at=_parse_time(data.get("retry_at")),
    )
