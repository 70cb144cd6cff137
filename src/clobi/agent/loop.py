"""The agent: one single-threaded loop that claims, runs, watches and reports jobs.

Each turn: reap ended processes, enforce walltimes and kill escalations, heartbeat when due
(renew leases, learn about cancels and drain), self-fence if leases could not be renewed, sweep
if this agent holds the sweeper lock, report outcomes and claim more in one transaction, start
what was claimed, then sleep on the children's pidfds and the doorbell until something happens.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from clobi.agent import attempt as att
from clobi.agent import process, teardown
from clobi.agent.committer import Committer, Done
from clobi.agent.leases import LeaseKeeper
from clobi.agent.logtail import LogTails
from clobi.agent.pacing import REPORT_DELAY_S, Pace
from clobi.agent.workdirs import WorkDirs
from clobi.errors import ClobiError
from clobi.model.records import AgentInfo, Capacity, Claim, Outcome
from clobi.model.states import AttemptState
from clobi.sandbox.base import SandboxStore
from clobi.session import Session
from clobi.store.base import ClaimRequest, Store, Wakeup

log = logging.getLogger("clobi.agent")

IDLE_POLL_S = 1.0  # claim attempt without a doorbell ring, for backoff-delayed jobs


@dataclass
class AgentOptions:
    """How much of this machine the agent offers, and who it says it is."""

    cpus: float | None = None
    memory_bytes: int | None = None
    gpus: int = 0
    labels: frozenset[str] = frozenset()
    name: str | None = None
    heartbeat_s: float | None = None
    lease_s: float | None = None
    pool: str = "local"  # embedded sessions; a joining agent gets its token's pool
    instance_id: int | None = None  # the manager's instance this agent runs on


@dataclass(frozen=True)
class _Pending:
    """A report-and-claim call under way: what it asked for, when, and the rings seen then."""

    request: ClaimRequest | None
    at: float
    rings: int


@dataclass
class _Clock:
    next_heartbeat: float = 0.0
    next_sweep: float = 0.0
    next_fence: float = 0.0
    next_claim: float = 0.0
    renewed_at: float = field(default_factory=time.monotonic)


class Agent:
    """Runs jobs of one session until drained."""

    def __init__(
        self, session: Session, store: Store, sandbox: SandboxStore, options: AgentOptions
    ) -> None:
        cpus, memory = process.free_capacity_of_machine()
        self.session, self.store, self.sandbox = session, store, sandbox
        s = session.settings
        self.lease_s = options.lease_s or s.lease_s
        self.heartbeat_s = options.heartbeat_s or s.heartbeat_s
        self.info = AgentInfo(
            name=options.name or f"{socket.gethostname()}-{os.getpid()}",
            host=socket.gethostname(),
            cpus=float(options.cpus or cpus),
            memory_bytes=int(options.memory_bytes or memory),
            gpus=options.gpus,
            labels=options.labels,
            pid=os.getpid(),
            pool=options.pool,
            instance_id=options.instance_id,
        )
        self.work_dir = str(session.work_dir)
        self.running: dict[int, att.Attempt] = {}
        self.done: list[att.Attempt] = []
        self.done_since = 0.0  # when the oldest unreported outcome was ready
        self.backlog: deque[att.Attempt] = deque()  # claimed, not started (short jobs only)
        self.pace = Pace(slots=max(1, int(self.info.cpus)))
        self.terminator = teardown.Terminator()
        self.draining = threading.Event()
        self.clock = _Clock()
        self.agent_id = 0
        self.bell: Wakeup | None = None
        self._pending = _Pending(None, 0.0, 0)
        self.dirs = WorkDirs(self.work_dir, f"{self.info.host}-{os.getpid()}")
        self.log_tails = LogTails()
        self.keeper = LeaseKeeper(store, lambda: self.agent_id, self.lease_s, self.heartbeat_s)
        self.committer = Committer()
        self.reporting: list[att.Attempt] = []  # outcomes in the committer's call
        self.rings = 0  # doorbell rings seen: a claim that came back short backs off only
        #                 if none rang while it was under way

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        self.agent_id = self.store.register_agent(self.info)
        self.bell = self.store.listen(f"agent-{self.agent_id}")
        log.info("agent %s (id %d) up with %s cpus", self.info.name, self.agent_id, self.info.cpus)
        try:
            while not (
                self.draining.is_set()
                and not self.running
                and not self.done
                and not self.backlog
                and not self.committer.busy
            ):
                self.turn()
        finally:
            self._shutdown()
        return 0

    def turn(self) -> None:
        """One pass of the loop."""
        now = time.monotonic()
        self._reap()
        self._collect()
        self._enforce_deadlines(now)
        if now >= self.clock.next_heartbeat:
            self._heartbeat(now)
        if now >= self.clock.next_fence:
            self._fence(now)
        if now >= self.clock.next_sweep:
            self._sweep(now)
        self._report_and_claim(now)
        self._sleep()

    def _reap(self) -> None:
        by_pid = {a.proc.pid: a for a in self.running.values() if a.proc is not None}
        for pid, code, _cpu_s in process.reap():
            a = by_pid.get(pid)
            if a is None:
                continue  # an orphan reparented to us; nothing to report
            assert a.proc is not None
            teardown.cleanup_leftovers(a.proc, thorough=a.ended_as is not None)
            self.pace.observe(time.monotonic() - a.proc.started_monotonic)
            self.terminator.forget(a.proc)
            att.ended(a, code)
            self._move_to_done(a)

    def _move_to_done(self, a: att.Attempt) -> None:
        self.running.pop(a.id, None)
        if not self.done:
            self.done_since = time.monotonic()
        self.done.append(a)

    def _enforce_deadlines(self, now: float) -> None:
        for a in list(self.running.values()):
            if a.walltime_deadline is not None and now >= a.walltime_deadline:
                a.walltime_deadline = None
                walltime = a.claim.spec.resources.walltime_s
                self._stop(a, AttemptState.TIMED_OUT, f"walltime of {walltime:g} s exceeded")
        for proc in self.terminator.due(now):
            teardown.signal_job(proc, signal.SIGKILL)

    def _stop(self, a: att.Attempt, state: AttemptState, reason: str) -> None:
        if a.ended_as is None:
            a.ended_as, a.reason = state, reason
        if a.proc is not None:
            self.terminator.start(a.proc, self.session.settings.kill_grace_s)
        elif a in self.backlog:  # never started: it ends here
            self.backlog.remove(a)
            self._move_to_done(a)

    def _held(self) -> list[att.Attempt]:
        """Attempts this agent holds a lease for: running and not yet started."""
        return [*self.running.values(), *self.backlog]

    def _heartbeat(self, now: float) -> None:
        self.clock.next_heartbeat = now + self.heartbeat_s
        held = self._held()
        ids = [a.id for a in held]
        try:
            reply = self.store.heartbeat(self.agent_id, ids, self.lease_s)
        except ClobiError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        for a in held:
            if a.id not in reply.renewed:
                self._lose(a, "lease not renewed")
                continue
            a.lease_deadline = now + self.lease_s
            if a.id in reply.cancel:
                self._stop(a, AttemptState.CANCELLED, "killed by user")
        if reply.drain and not self.draining.is_set():
            log.info("asked to drain")
            self.draining.set()
        self._push_logs()

    def _push_logs(self) -> None:
        started = self.running.values()
        tails = self.log_tails.collect((a.id, a.root) for a in started if a.proc is not None)
        if not tails:
            return
        try:
            self.store.push_logs(self.agent_id, tails)
        except ClobiError as exc:
            log.warning("could not push log tails (sent again next beat): %s", exc)
            return
        self.log_tails.sent(tails)

    def _fence(self, now: float) -> None:
        # Stop jobs before their lease can expire: the sweeper will hand them to someone else.
        # Checked every tenth of the margin, not every turn (short jobs make many turns).
        margin = min(self.heartbeat_s, self.lease_s / 4)
        self.clock.next_fence = now + margin / 10
        for a in self._held():
            if now >= a.lease_deadline - margin:
                self._lose(a, "could not renew the lease; stopped to stay fenced")

    def _lose(self, a: att.Attempt, why: str) -> None:
        log.warning("attempt %d of job %d: %s", a.id, a.claim.job_id, why)
        if a.proc is not None:
            teardown.signal_job(a.proc, signal.SIGKILL)
        self.running.pop(a.id, None)
        if a in self.backlog:
            self.backlog.remove(a)
        self.terminator.forget_later(a.proc)
        att.discard(a, self.dirs)

    def _sweep(self, now: float) -> None:
        s = self.session.settings
        self.clock.next_sweep = now + s.sweep_interval_s
        owner = f"{self.info.host}:{os.getpid()}:{self.agent_id}"
        try:
            if self.store.try_lock("sweeper", owner, s.sweep_interval_s * 3):
                result = self.store.sweep(s.lost_cap, s.agent_timeout_s)
                if result.lost_attempts:
                    log.info("swept: lost attempts %s", list(result.lost_attempts))
        except ClobiError as exc:
            log.warning("sweep failed: %s", exc)

    def _report_and_claim(self, now: float) -> None:
        # Jobs claimed earlier start first: they run while this turn's transaction commits.
        self._start_backlog()
        if self.committer.busy:
            return
        request = self._claim_request(now)
        due = self._report_due(now)
        if not due and request is None:
            return
        # A claim carries the finished outcomes along: one commit instead of two.
        report = due or (request is not None and bool(self.done))
        try:
            # Storing outputs may fail too (a remote sandbox): then everything is retried
            # next turn; outputs already stored are not stored again.
            outcomes = [self._outcome(a) for a in self.done] if report else []
        except ClobiError as exc:
            log.warning("store: %s", exc)
            return
        reporting = self.done if report else []
        if report:
            self.done = []
        call = functools.partial(self._store_call, outcomes, request)
        self.reporting, self._pending = reporting, _Pending(request, now, self.rings)
        if self.running or self.backlog:  # jobs to look after meanwhile: commit on the side
            self.committer.submit(call)
        else:  # nothing to overlap with: a thread hand-off would only add latency
            try:
                done = Done(value=call())
            except ClobiError as exc:
                done = Done(error=exc)
            self._apply(done)

    def _store_call(
        self, outcomes: list[Outcome], request: ClaimRequest | None
    ) -> tuple[list[int], list[Claim]]:
        """The store call itself (on the committer's thread, or inline)."""
        if outcomes:
            return self.store.finish(self.agent_id, outcomes, request)
        assert request is not None
        return [], self.store.claim(request)

    def _collect(self) -> None:
        """Apply the committer's result if its call has ended."""
        done = self.committer.take()
        if done is not None:
            self._apply(done)

    def _apply(self, done: Done, start: bool = True) -> None:
        """What the report-and-claim call (`self._pending`) ended with means for the agent."""
        reporting, self.reporting = self.reporting, []
        pending = self._pending
        if done.error is not None:
            if not isinstance(done.error, ClobiError):
                raise done.error
            log.warning("store: %s", done.error)  # keep the outcomes; report them again
            if reporting:
                if not self.done:
                    self.done_since = time.monotonic()
                self.done[:0] = reporting
            return
        refused, claims = done.value
        for attempt_id in refused:
            log.warning("attempt %d: report refused (stale)", attempt_id)
        for a in reporting:
            att.discard(a, self.dirs)
        request = pending.request
        if request is not None and len(claims) < request.limit and self.rings == pending.rings:
            self.clock.next_claim = pending.at + IDLE_POLL_S  # the queue looked empty
        for claim in claims:
            root = f"{self.work_dir}/{claim.attempt_id}"
            self.backlog.append(att.Attempt(claim, root, pending.at + self.lease_s))
        if start:
            self._start_backlog()

    def _report_due(self, now: float) -> bool:
        if self.draining.is_set() and self.done:
            return True
        return self.pace.report_due(len(self.done), now - self.done_since, len(self.backlog))

    def _start_backlog(self) -> None:
        """Start claimed jobs in claim order while they fit the free slots."""
        cpus, memory, gpus = self._free()
        while self.backlog:
            r = self.backlog[0].claim.spec.resources
            fits = r.cpus <= cpus + 1e-9 and r.memory_bytes <= memory and r.gpus <= gpus
            if self.running and not fits:
                return
            a = self.backlog.popleft()
            a.started_wall = time.time()
            if a.claim.input_sha256 is None:
                att.start(a, self.sandbox, self.dirs)
            else:
                with self._leases_kept(a):  # an input download can outlast the lease
                    att.start(a, self.sandbox, self.dirs)
            if a.proc is None:
                self._move_to_done(a)
            else:
                self.running[a.id] = a
            cpus, memory, gpus = cpus - r.cpus, memory - r.memory_bytes, gpus - r.gpus

    def _free(self) -> tuple[float, int, int]:
        busy = [a.claim.spec.resources for a in self.running.values()]
        return (
            self.info.cpus - sum(r.cpus for r in busy),
            self.info.memory_bytes - sum(r.memory_bytes for r in busy),
            self.info.gpus - sum(r.gpus for r in busy),
        )

    def _outcome(self, a: att.Attempt) -> Outcome:
        # Stored once: if the report fails, the next turn reports the same stored output.
        if a.outcome is None:
            inline_max = self.session.settings.inline_output_max_bytes
            if att.output_may_be_large(a, inline_max):
                with self._leases_kept():
                    a.outcome = att.finish(a, self.sandbox, inline_max, self.info.name)
            else:
                a.outcome = att.finish(a, self.sandbox, inline_max, self.info.name)
        return a.outcome

    @contextlib.contextmanager
    def _leases_kept(self, starting: att.Attempt | None = None) -> Iterator[None]:
        """Around a transfer that may outlast the lease: the keeper renews every held
        attempt's lease meanwhile (and that of the attempt `starting`, between the backlog
        and the running ones), and the loop takes its renewals over afterwards."""
        held = [*self.running.values(), *self.backlog, *self.done]
        if starting is not None:
            held.append(starting)
        with self.keeper.covering([a.id for a in held]):
            yield
        for a in held:
            renewed = self.keeper.renewed.get(a.id)
            if renewed is not None:
                a.lease_deadline = max(a.lease_deadline, renewed + self.lease_s)

    def _claim_request(self, now: float) -> ClaimRequest | None:
        if self.draining.is_set() or now < self.clock.next_claim:
            return None
        held = self._held()
        limit = self.pace.claim_size(len(held))
        if limit <= 0:
            return None
        f, info = self.pace.factor, self.info
        need = [a.claim.spec.resources for a in held]
        room = Capacity(
            info.cpus * f - sum(r.cpus for r in need),
            info.memory_bytes * f - sum(r.memory_bytes for r in need),
            info.gpus * f - sum(r.gpus for r in need),
            info.labels,
        )
        if room.cpus < 1e-9:
            return None
        whole = Capacity(info.cpus, info.memory_bytes, info.gpus, info.labels)
        return ClaimRequest(self.agent_id, room, limit, self.lease_s, self.work_dir, per_job=whole)

    def _sleep(self) -> None:
        now = time.monotonic()
        busy = self.committer.busy  # its end wakes the loop: report and claim after it
        if not busy and self._report_due(now):
            return
        wake = [self.clock.next_heartbeat, self.clock.next_sweep, self.terminator.next_due()]
        if self.done and not busy:
            wake.append(self.done_since + REPORT_DELAY_S)
        if not busy and not self.draining.is_set() and self._claim_request(0.0) is not None:
            wake.append(self.clock.next_claim)
        wake += [a.walltime_deadline for a in self.running.values() if a.walltime_deadline]
        timeout = max(0.0, min(w for w in wake if w is not None) - now)
        procs = [a.proc for a in self.running.values() if a.proc is not None]
        fds = [self.committer.fileno()] if busy else []
        if self.bell is not None:
            fds.append(self.bell.fileno())
        ready = process.wait_any(procs, timeout, wake_fds=fds)
        bell = self.bell
        if bell is not None and bell.fileno() in ready and bell.rang():
            self.rings += 1
            self.clock.next_claim = 0.0

    def _shutdown(self) -> None:
        done = self.committer.take(wait=True)  # an interrupted loop: let the call end
        if done is not None and done.error is None:
            self._apply(done, start=False)
        self.committer.close()
        for a in list(self.running.values()):
            self._lose(a, "agent stopping")
        with contextlib.suppress(ClobiError):
            self.store.agent_exited(self.agent_id)
        if self.bell is not None:
            self.bell.close()
        self.keeper.close()
        self.dirs.close()


def run_agent(session: Session, options: AgentOptions) -> int:
    """Run an agent in the foreground. SIGTERM or Ctrl-C drains it; a second Ctrl-C stops
    its jobs at once (they are requeued when their leases end)."""
    process.become_subreaper()
    Path(session.work_dir).mkdir(parents=True, exist_ok=True)
    store, sandbox = session.open_store(), session.open_sandbox()
    agent = Agent(session, store, sandbox, options)
    _install_signals(agent)
    try:
        return agent.run()
    finally:
        store.close()


def _install_signals(agent: Agent) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def drain(signum: int, _frame: FrameType | None) -> None:
        if agent.draining.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        agent.draining.set()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
