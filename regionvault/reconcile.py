"""The control loop of one domain: every backup resumed, every leftover swept.

A reconciler is to a backup what a Kubernetes controller is to a pod. On every tick (beat,
about once a minute, in the domain's own queue) it compares what should be with what is and
acts on the difference, so a missed event costs one tick, never the outcome:

- a backup whose owner died (its step is "running" but nobody holds its lease) is resumed
  from the step its spool and manifests name;
- a step that finished but whose next message was lost (broker outage at a step boundary)
  gets that message again once the hand-over is older than ``handoff_grace_seconds``;
- a failure that named an earlier step to run again (a spool lost with its disk) is resumed
  from that step, at most ``max_resumes`` times;
- after the broker lost its data, backups still in flight are found in the spool and resumed;
- spool directories, open multipart uploads and objects without a manifest that no live
  backup owns are removed once older than ``orphan_after_seconds``.

Running it twice, or after a crash, does no harm: every resumption is an atomic claim of the
next run (``Journal.claim`` with the run the reconciler saw), and a live owner's lease is
never touched. The decision is the pure function ``decide``; ``Reconciler`` gathers what it
needs and carries the decisions out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import redis

from regionvault import manifest_store
from regionvault.backup_state import BackupFacts, gather_facts, next_step
from regionvault.config import ReconcileConfig
from regionvault.context import DomainContext
from regionvault.errors import ConfigError, ObjectLocked, RegionvaultError, StoreError
from regionvault.journal import BackupRecord, BackupState, Journal, StepState
from regionvault.lease import Holder, LeaseStore
from regionvault.manifest import MANIFEST_SUFFIX, OBJECT_SUFFIX, STEPS, BackupRef, Step

log = logging.getLogger("regionvault.reconcile")


class Action(StrEnum):
    LEAVE = "leave"
    RESUME = "resume"
    REBUILD = "rebuild"  # the journal lost the backup: write it again from the facts
    SWEEP = "sweep"  # remove what the backup left in the spool
    GIVE_UP = "give-up"  # resumed too often: failed, for a person


@dataclass(frozen=True)
class Observation:
    """Everything ``decide`` looks at for one backup."""

    backup_id: str
    record: BackupRecord | None
    holder: Holder | None
    facts: BackupFacts
    #: seconds since the newest file of the backup's spool directory changed (None: none)
    spool_age: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    step: Step | None = None


def _running_step(record: BackupRecord) -> Step | None:
    for step in STEPS:
        if record.steps[step].state in (StepState.RUNNING, StepState.RETRYING):
            return step
    return None


def decide(obs: Observation, now: datetime, cfg: ReconcileConfig) -> Decision:
    """What the reconciler does about one backup (pure: no I/O)."""
    facts, record = obs.facts, obs.record
    if obs.holder is not None:
        return Decision(Action.LEAVE, f"owned by {obs.holder.owner} ({obs.holder.step}, "
                                      f"token {obs.holder.token})")
    if facts.s3_unknown:
        return Decision(Action.LEAVE, "S3 cannot be read now; judged at the next tick")
    old_spool = obs.spool_age is not None and obs.spool_age > cfg.orphan_after_seconds
    if record is not None and record.state is BackupState.CANCELLED:
        if facts.spool_dir:
            return Decision(Action.SWEEP, "cancelled; its spool files are removed")
        return Decision(Action.LEAVE, "cancelled")
    if facts.verified:
        if record is None or record.state is not BackupState.VERIFIED:
            return Decision(Action.REBUILD, "verified in the stores; the journal is rebuilt")
        if facts.spool_dir:
            return Decision(Action.SWEEP, "verified; spool files left behind are removed")
        return _expire_pending(record, now, cfg)
    step = next_step(facts)
    assert step is not None  # not verified, so verify at least is still to run
    resumes = record.resumes if record is not None else 0
    if record is None:
        if not facts.spool_dir and facts.s3_steps is None:
            return Decision(Action.LEAVE, "nothing of it exists")
        if old_spool and facts.s3_steps is None:
            return Decision(Action.SWEEP, "no journal, no manifest and an old spool")
        return Decision(Action.RESUME, f"in flight but missing from the journal; resumed "
                                       f"from {step.value}", step)
    idle = (now - record.updated_at).total_seconds()
    if record.state is BackupState.FAILED:
        if record.rerun is None:
            if old_spool:
                return Decision(Action.SWEEP, "failed long ago and not retried; its spool "
                                              "files are removed")
            return Decision(Action.LEAVE, f"failed at {record.error_step}: needs a person")
        if resumes >= cfg.max_resumes:
            return Decision(Action.LEAVE, f"failed; resumed {resumes} times already")
        return Decision(Action.RESUME, f"{record.error_step} asked for step "
                                       f"{record.rerun.value} again; resumed from "
                                       f"{step.value}", step)
    if record.state in (BackupState.QUEUED, BackupState.RUNNING):
        if resumes >= cfg.max_resumes:
            return Decision(Action.GIVE_UP, f"resumed {resumes} times without finishing")
        running = _running_step(record)
        if record.retry_at is not None and now < record.retry_at + timedelta(
                seconds=cfg.handoff_grace_seconds):
            return Decision(Action.LEAVE, "waiting to retry after a transient error")
        if running is not None and record.steps[running].state is StepState.RUNNING:
            # a step records "running" only while it holds the lease, and records its outcome
            # before it lets go: running without a lease means its owner died
            return Decision(Action.RESUME, f"the owner of step {running.value} died; resumed "
                                           f"from {step.value}", step)
        if idle > cfg.handoff_grace_seconds:
            return Decision(Action.RESUME, f"no step started for {idle:.0f}s; resumed from "
                                           f"{step.value}", step)
        return Decision(Action.LEAVE, "handed over; waiting for the next step to start")
    return Decision(Action.LEAVE, f"state {record.state.value}")


def _expire_pending(record: BackupRecord, now: datetime, cfg: ReconcileConfig) -> Decision:
    """A verified backup whose expire step died or was never sent: expire again (expiry of
    the source's older backups must not wait for the next backup)."""
    expire = record.steps[Step.EXPIRE].state
    if expire is StepState.DONE or record.resumes >= cfg.max_resumes:
        return Decision(Action.LEAVE, "verified")
    if expire is StepState.RUNNING:
        return Decision(Action.RESUME, "the owner of step expire died", Step.EXPIRE)
    if (now - record.updated_at).total_seconds() > cfg.handoff_grace_seconds:
        return Decision(Action.RESUME, "verified, but expire never started", Step.EXPIRE)
    return Decision(Action.LEAVE, "verified; expire is on its way")


class Starter(Protocol):
    """Starts the next run of a backup (the Celery side sends the message).

    MUST claim atomically with ``expected_run`` and return False, sending nothing, when the
    claim is refused (someone else started a run meanwhile)."""

    def __call__(self, backup_id: str, step: Step, *, expected_run: int, note: str) -> bool: ...


class FanOut(Protocol):
    """Sends a domain's scheduled fan-out for ``slot`` again (idempotent: one slot, one
    backup per source)."""

    def __call__(self, slot: str) -> None: ...


def _never_fan_out(slot: str) -> None:
    return None


@dataclass
class Report:
    """What one tick did, for the journal, the metrics and the log."""

    domain: str
    actions: Counter[str] = field(default_factory=Counter)
    swept: Counter[str] = field(default_factory=Counter)
    resumed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"domain": self.domain, "actions": dict(self.actions),
                "swept": dict(self.swept), "resumed": self.resumed, "errors": self.errors}


_REPORT_KEY = "regionvault:reconcile:{}"


class Reconciler:
    """One tick of one domain's control loop."""

    def __init__(self, ctx: DomainContext, journal: Journal, leases: LeaseStore,
                 start: Starter, *, fan_out: FanOut = _never_fan_out,
                 clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.journal = journal
        self.leases = leases
        self.start = start
        self.fan_out = fan_out
        self.cfg = ctx.config.reconcile
        self._clock = clock

    def tick(self) -> Report:
        report = Report(self.ctx.domain.value)
        now = self.ctx.clock()
        live: set[str] = set()
        for backup_id in sorted(self._candidates()):
            try:
                obs = self._observe(backup_id)
                if obs.holder is not None or (obs.record is not None and obs.record.in_flight):
                    live.add(backup_id)
                decision = decide(obs, now, self.cfg)
                self._carry_out(obs, decision, report)
                if decision.action is Action.RESUME:
                    live.add(backup_id)
            except (RegionvaultError, redis.RedisError, OSError) as exc:
                report.errors.append(f"{backup_id}: {exc}")
                log.warning("reconcile of %s: %s", backup_id, exc)
        self._complete_fan_outs(now, report)
        if self._store_sweep_due():
            self._sweep_stores(live, report)
        self._save(report)
        return report

    def _store_sweep_due(self) -> bool:
        """Listing whole buckets every minute would cost more than it finds: leftovers are
        removed only once older than ``orphan_after_seconds`` anyway, so the stores are swept
        a few times within that period, not on every tick."""
        key = _REPORT_KEY.format(self.ctx.domain.value)
        every = self.cfg.orphan_after_seconds / 6
        try:
            last = self.journal.client.hget(key, "stores_swept_at")
            if last and self._clock() - float(last) < every:
                return False
            self.journal.client.hset(key, "stores_swept_at", self._clock())
        except redis.RedisError:
            pass  # cannot tell: sweeping once too often does no harm
        return True

    def _complete_fan_outs(self, now: datetime, report: Report) -> None:
        """Scheduled fan-outs that began but never finished are sent again."""
        for slot, began in self.journal.fanouts_pending(self.ctx.domain.value).items():
            if (now - began).total_seconds() > self.cfg.handoff_grace_seconds:
                self.fan_out(slot)
                report.actions["fan-out"] += 1
                log.info("reconcile: the fan-out of slot %s never finished; sent again", slot)

    # --- looking -----------------------------------------------------------------------------

    def _candidates(self) -> set[str]:
        """Backups that may need something: not finished in the journal, or in the spool."""
        found = set(self.ctx.spool.backup_ids())
        for record in self.journal.recent(self.ctx.domain.value, limit=1000):
            if record.state is not BackupState.VERIFIED or record.steps[
                    Step.EXPIRE].state is not StepState.DONE:
                found.add(record.backup_id)
        valid = set()
        for backup_id in found:
            try:
                ref = BackupRef.parse(backup_id)
            except ConfigError:
                continue
            if ref.domain is self.ctx.domain:
                valid.add(backup_id)
        return valid

    def _observe(self, backup_id: str) -> Observation:
        record = self.journal.get(backup_id)
        holder = self.leases.holder(backup_id)
        try:
            facts = gather_facts(self.ctx, backup_id)
        except ConfigError:  # a source removed from the configuration: only sweeping is left
            facts = BackupFacts(backup_id, False, False,
                                self.ctx.spool.dir_for(backup_id).exists(), None)
        return Observation(backup_id, record, holder, facts, self._spool_age(backup_id))

    def _spool_age(self, backup_id: str) -> float | None:
        directory = self.ctx.spool.dir_for(backup_id)
        try:
            times = [p.stat().st_mtime for p in directory.iterdir()]
        except FileNotFoundError:
            return None
        return self._clock() - max(times) if times else None

    # --- acting ------------------------------------------------------------------------------

    def _carry_out(self, obs: Observation, decision: Decision, report: Report) -> None:
        report.actions[decision.action.value] += 1
        backup_id = obs.backup_id
        if decision.action is Action.LEAVE:
            return
        log.info("reconcile %s: %s (%s)", backup_id, decision.action.value, decision.reason)
        if decision.action is Action.RESUME:
            assert decision.step is not None
            run = obs.record.run if obs.record is not None else 0
            if obs.record is None:  # the journal lost it: write back what the facts show
                done = STEPS[:STEPS.index(decision.step)]
                self.journal.rebuild(backup_id, {s: self.ctx.clock() for s in done},
                                     state=BackupState.RUNNING,
                                     note=f"reconciler: {decision.reason}")
            if self.start(backup_id, decision.step, expected_run=run,
                          note=f"resumed by the reconciler: {decision.reason}"):
                report.resumed.append(f"{backup_id} from {decision.step.value}")
        elif decision.action is Action.REBUILD:
            self._rebuild(obs, decision)
            if obs.facts.spool_dir:
                self._sweep_spool(backup_id, decision.reason, report)
        elif decision.action is Action.SWEEP:
            self._sweep_spool(backup_id, decision.reason, report)
        elif decision.action is Action.GIVE_UP:
            running = (_running_step(obs.record) if obs.record else None) or Step.DUMP
            self.journal.step(backup_id, running, StepState.FAILED,
                              detail=f"the reconciler gave up: {decision.reason}; retry it "
                                     f"with: regionvault retry {backup_id}")

    def _rebuild(self, obs: Observation, decision: Decision) -> None:
        ref, src = manifest_store.resolve(self.ctx, obs.backup_id)
        _, mkey = manifest_store.keys_of(ref, src)
        manifest = manifest_store.read_manifest(self.ctx, self.ctx.primary(src), mkey)
        if manifest is None:
            return
        self.journal.rebuild(obs.backup_id, {s: r.at for s, r in manifest.steps.items()},
                             state=BackupState.VERIFIED, note=f"reconciler: {decision.reason}")

    def _sweep_spool(self, backup_id: str, reason: str, report: Report) -> None:
        files = [p for p in self.ctx.spool.dir_for(backup_id).rglob("*") if p.is_file()]
        self.ctx.spool.clean(backup_id)
        report.swept["spool"] += 1
        with contextlib.suppress(redis.RedisError):
            self.journal.note(backup_id, f"reconciler removed {len(files)} spool files: "
                                         f"{reason}")

    def _sweep_stores(self, live: set[str], report: Report) -> None:
        """Open uploads and objects without a manifest that no live backup owns."""
        prefix = f"{self.ctx.domain.value}/"
        cutoff = self.ctx.clock() - timedelta(seconds=self.cfg.orphan_after_seconds)
        for role in self.ctx.store_names:
            store = self.ctx.store(role)
            try:
                for upload in store.incomplete_uploads(prefix):
                    backup_id = _backup_id_of(upload.key)
                    if backup_id in live or self._leased(backup_id):
                        continue
                    if upload.initiated is not None and upload.initiated > cutoff:
                        continue
                    if store.abort_upload(upload):
                        report.swept[f"{role}-upload"] += 1
                        log.info("reconcile: aborted an open upload of %s in %s",
                                 upload.key, self.ctx.url(role))
                self._sweep_objects(role, prefix, live, cutoff, report)
            except StoreError as exc:
                report.errors.append(f"{role}: {exc}")
                log.warning("reconcile: sweeping %s: %s", self.ctx.url(role), exc)

    def _sweep_objects(self, role: str, prefix: str, live: set[str], cutoff: datetime,
                       report: Report) -> None:
        store = self.ctx.store(role)
        objects = {}
        manifests = set()
        for info in store.list_info(prefix):
            if info.key.endswith(MANIFEST_SUFFIX):
                manifests.add(info.key.removesuffix(MANIFEST_SUFFIX))
            elif info.key.endswith(OBJECT_SUFFIX):
                objects[info.key.removesuffix(OBJECT_SUFFIX)] = info
        for stem, info in objects.items():
            backup_id = stem.rsplit("/", 1)[-1]
            if stem in manifests or backup_id in live or self._leased(backup_id):
                continue
            if info.modified is None or info.modified > cutoff:
                continue
            try:
                store.delete(info.key)
            except ObjectLocked as exc:
                # locked until the sweep's due time at the latest: expiry removes it then
                log.info("reconcile: %s has no manifest but stays until its lock ends: %s",
                         info.key, exc)
                continue
            report.swept[f"{role}-object"] += 1
            log.info("reconcile: deleted %s, an object without a manifest", info.key)

    def _leased(self, backup_id: str) -> bool:
        try:
            return self.leases.holder(backup_id) is not None
        except redis.RedisError:
            return True  # cannot tell: never remove what may have a live owner

    def _save(self, report: Report) -> None:
        if report.errors:
            log.warning("reconcile of domain %s: %d problems", report.domain, len(report.errors))
        try:
            self.journal.client.hset(_REPORT_KEY.format(report.domain), mapping={
                "at": self.ctx.clock().isoformat(),
                "resumed": len(report.resumed),
                "swept": sum(report.swept.values()),
                "errors": len(report.errors)})
        except redis.RedisError as exc:
            log.warning("reconcile report not saved: %s", exc)


def _backup_id_of(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    for suffix in (MANIFEST_SUFFIX, OBJECT_SUFFIX):
        name = name.removesuffix(suffix)
    return name
