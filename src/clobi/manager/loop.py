"""The resource manager's loop: crash-only, one active per session (elected through the
store's `manager` lock). Each tick observes the queue, the agents and the instances (asking
each pool's provider about its machines), lets the pure policy decide, carries the decision out
through the providers, and records every action with its reason as an event and the verdicts
on waiting jobs for `clobi why`.

Everything the manager knows lives in the store (instances, idle votes, verdicts) or at the
providers, so a manager killed at any point and started again carries on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from clobi.auth import issue, token_id_of
from clobi.errors import ClobiError, ProviderError
from clobi.manager.config import PoolConfig, PoolWatcher
from clobi.manager.plan import (
    ActionKind,
    AgentView,
    Decision,
    Demand,
    InstanceView,
    Observation,
    ProviderState,
    Requirement,
)
from clobi.manager.policy import decide
from clobi.manager.providers.base import JoinInfo, Launched, LaunchRequest, Provider
from clobi.manager.providers.registry import provider_class
from clobi.model.auth import Role, instance_token_name
from clobi.model.instances import AgentLoad, InstanceRecord, InstanceState
from clobi.model.pools import PoolSpec
from clobi.model.records import AgentRecord
from clobi.session import CONFIG_NAME, Session
from clobi.store.base import Store

log = logging.getLogger("clobi.manager")

LOCK = "manager"
VERDICTS_KEY = "manager.verdicts"
VOTES_KEY = "manager.idle_votes"
SESSION_ID_KEY = "session.id"


def session_id(store: Store) -> str:
    """The session's stable id (made on first use), used to tag its machines."""
    found = store.get_meta(SESSION_ID_KEY)
    if found is None:
        found = uuid.uuid4().hex[:16]
        store.set_meta(SESSION_ID_KEY, found)
    return found


@dataclass
class _Pools:
    """A provider per pool, rebuilt when the pool's declaration changes."""

    specs: dict[str, PoolSpec]
    providers: dict[str, Provider]


class Manager:
    """Grows and shrinks the session's pools."""

    def __init__(self, session: Session, store: Store, join: JoinInfo) -> None:
        self.session, self.store, self.join = session, store, join
        self.watcher = PoolWatcher(session.root / CONFIG_NAME)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.pools = _Pools({}, {})
        self._reported_error: str | None = None

    # --- running -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; only while holding the session's manager lock."""
        try:
            while not stop.is_set():
                config = self.watcher.current()
                tick_s = config.settings.tick_s
                try:
                    if self.store.try_lock(LOCK, self.owner, max(10.0, 3 * tick_s)):
                        self.tick(config)
                except ClobiError as exc:
                    log.warning("manager tick failed (tried again next tick): %s", exc)
                stop.wait(tick_s)
        finally:
            self.close()

    def close(self) -> None:
        for provider in self.pools.providers.values():
            provider.close()
        self.pools.providers.clear()

    def tick(self, config: PoolConfig | None = None) -> Decision:
        """One observe → decide → act → record pass."""
        config = config or self.watcher.current()
        self._report_config_error()
        self._sync_providers(config)
        now = time.time()
        self._resume_launches(now - 2 * config.settings.tick_s)
        self._carry_out_user_kills()
        observation = self.observe(config, now)
        decision = decide(observation)
        self._record_actions(decision)  # first: a decision is on record even if acting fails
        self._act(decision, {v.record.id: v for v in observation.instances})
        self._record_verdicts(decision, now)
        return decision

    # --- observing ----------------------------------------------------------------------
    def observe(self, config: PoolConfig, now: float) -> Observation:
        agents = self._agents(now)
        by_instance = {a.instance_id: a for a in agents if a.instance_id is not None}
        records = [r for r in self.store.list_instances() if r.pool in self.pools.specs]
        states = self._describe(records)
        views = tuple(
            InstanceView(r, by_instance.get(r.id), states.get(r.id, ProviderState.PENDING))
            for r in records
        )
        views = self._reap_silent(views)
        demand = tuple(
            Demand(Requirement(q.cpus, q.memory_bytes, q.gpus, q.labels), q.priority, q.count)
            for q in self.store.queued_demand()
        )
        return Observation(
            now=now,
            pools=self._observed_pools(config),
            settings=config.settings,
            demand=demand,
            instances=views,
            agents=tuple(agents),
            idle_votes=self._votes(),
        )

    def _agents(self, now: float) -> list[AgentView]:
        return agent_views(self.store, now)

    def _describe(self, records: Sequence[InstanceRecord]) -> dict[int, ProviderState]:
        states: dict[int, ProviderState] = {}
        for pool, group in _by_pool(r for r in records if r.provider_id):
            try:
                found = self.pools.providers[pool].describe([r.provider_id for r in group])
            except ProviderError as exc:
                log.warning("pool %s: cannot describe its machines: %s", pool, exc)
                continue
            for r in group:
                states[r.id] = found.get(r.provider_id, ProviderState.GONE)
        return states

    def _reap_silent(self, views: tuple[InstanceView, ...]) -> tuple[InstanceView, ...]:
        """Instances whose agent joined and is no longer alive: terminated now, jobs requeued."""
        kept = []
        for v in views:
            r = v.record
            if r.state is InstanceState.RUNNING and v.agent is None:
                self._terminate([v], "its agent went silent or exited")
            else:
                kept.append(v)
        return tuple(kept)

    def _votes(self) -> dict[str, int]:
        raw = self.store.get_meta(VOTES_KEY)
        try:
            votes = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return {str(k): int(v) for k, v in votes.items()} if isinstance(votes, dict) else {}

    # --- acting -------------------------------------------------------------------------
    def _act(self, decision: Decision, views: dict[int, InstanceView]) -> None:
        for action in decision.actions:
            pool = self.pools.specs.get(action.pool)
            if pool is None or action.pool not in self.pools.providers:
                continue
            if action.kind is ActionKind.LAUNCH:
                self._launch(pool, action.count, action.reason)
                continue
            chosen = [views[i] for i in action.instance_ids if i in views]
            if action.kind is ActionKind.DRAIN:
                self._drain(chosen, action.reason)
            else:
                self._terminate(chosen, action.reason)

    def _launch(self, pool: PoolSpec, count: int, reason: str) -> None:
        records = [
            self.store.create_instance(pool.name, pool.provider, pool.cost_per_hour, reason)
            for _ in range(count)
        ]
        tokens = {r.id: self._bootstrap(pool, r.id) for r in records}
        requests = [LaunchRequest(r.id, tokens[r.id]) for r in records]
        try:
            answers = self.pools.providers[pool.name].launch(requests)
        except ProviderError as exc:
            answers = [Launched(r.id, error=str(exc)) for r in records]
        for answer in answers:
            if answer.error:
                self.store.set_instance(answer.instance_id, InstanceState.FAILED, answer.error)
                self._revoke(tokens.get(answer.instance_id, ""))
            else:
                record_launch(self.store, answer.instance_id, answer.provider_id)

    def _resume_launches(self, before: float) -> None:
        """Instances recorded as requested, by a manager that stopped before it heard the
        provider's answer: asked for again. Providers answer a launch of an instance they
        already started with that machine (none is started twice)."""
        stale = [
            r
            for r in self.store.list_instances()
            if r.state is InstanceState.REQUESTED and not r.provider_id and r.created_at < before
        ]
        for pool, group in _by_pool(stale):
            spec = self.pools.specs.get(pool)
            if spec is None or pool not in self.pools.providers:
                continue
            requests = [LaunchRequest(r.id, self._bootstrap(spec, r.id)) for r in group]
            try:
                answers = self.pools.providers[pool].launch(requests)
            except ProviderError as exc:
                log.warning("pool %s: cannot resume launches (tried again): %s", pool, exc)
                continue
            for answer in answers:
                if answer.error:
                    self.store.set_instance(answer.instance_id, InstanceState.FAILED, answer.error)
                else:
                    record_launch(self.store, answer.instance_id, answer.provider_id)

    def _bootstrap(self, pool: PoolSpec, instance_id: int) -> str:
        """A single-use token for the instance's agent (only when it joins a server)."""
        if self.join.url is None:
            return ""
        name = instance_token_name(instance_id)
        return issue(self.store, Role.BOOTSTRAP, name, pool.name, pool.boot_timeout_s)

    def _revoke(self, token: str) -> None:
        token_id = token_id_of(token) if token else None
        if token_id is not None:
            self.store.revoke_token(token_id)

    def _drain(self, views: Iterable[InstanceView], reason: str) -> None:
        for v in views:
            self.store.set_instance(v.record.id, InstanceState.DRAINING, reason)
            if v.agent is not None:
                self.store.set_drain(v.agent.agent_id)

    def _terminate(self, views: Iterable[InstanceView], reason: str) -> None:
        for pool, group in _by_pool(v.record for v in views):
            self._terminate_group(pool, group, reason)

    def _terminate_group(self, pool: str, group: list[InstanceRecord], reason: str) -> None:
        ids = [r.provider_id for r in group if r.provider_id]
        provider = self.pools.providers.get(pool)
        if ids and provider is not None:
            try:
                provider.terminate(ids)
            except ProviderError as exc:
                log.warning("pool %s: cannot terminate %s (tried again): %s", pool, ids, exc)
                return
        lost_cap = self.session.settings.lost_cap
        for r in group:
            ended = InstanceState.TERMINATED if r.provider_id else InstanceState.FAILED
            self.store.set_instance(r.id, ended, reason)
            if r.agent_id is not None:
                self.store.abandon_agent(r.agent_id, f"instance {r.id}: {reason}", lost_cap)

    def _carry_out_user_kills(self) -> None:
        """Instances a user hard-killed (`clobi pool kill`) are terminated at their provider."""
        doomed = [
            InstanceView(r)
            for r in self.store.list_instances()
            if r.state is InstanceState.TERMINATING and r.pool in self.pools.specs
        ]
        if doomed:
            self._terminate(doomed, "hard kill")

    # --- recording ----------------------------------------------------------------------
    def _record_actions(self, decision: Decision) -> None:
        for action in decision.actions:
            what = action.kind.value
            if action.kind is ActionKind.LAUNCH:
                what = f"launch {action.count}"
            elif action.instance_ids:
                what += " instance" + "s" * (len(action.instance_ids) > 1)
                what += " " + ", ".join(str(i) for i in action.instance_ids)
            detail = f"pool {action.pool}: {what}: {action.reason}"
            self.store.record_event(f"manager_{action.kind.value}", detail)
            log.info("%s", detail)

    def _record_verdicts(self, decision: Decision, now: float) -> None:
        verdicts = [
            {
                "requirement": v.requirement.key,
                "describe": v.requirement.describe(),
                "queued": v.queued,
                "text": v.text,
                "ts": now,
            }
            for v in decision.verdicts
        ]
        self.store.set_meta(VERDICTS_KEY, json.dumps(verdicts))
        self.store.set_meta(VOTES_KEY, json.dumps(dict(decision.idle_votes)))

    def _report_config_error(self) -> None:
        error = self.watcher.error
        text = None if error is None else str(error)
        if text is not None and text != self._reported_error:
            log.error("%s (the last good pools stay in force)", text)
            self.store.record_event("manager_config_error", text)
        self._reported_error = text

    def _sync_providers(self, config: PoolConfig) -> None:
        """A provider per declared pool: made anew when its provider or settings change,
        told the new bounds otherwise. A pool taken out of the file keeps its provider and
        is shrunk to nothing."""
        declared = {p.name for p in config.pools}
        for name, spec in list(self.pools.specs.items()):
            if name not in declared:
                self.pools.specs[name] = replace(spec, min=0, max=0)
        for pool in config.pools:
            old = self.pools.specs.get(pool.name)
            provider = self.pools.providers.get(pool.name)
            if provider is not None and old is not None and _same_machines(old, pool):
                provider.pool = pool
            else:
                if provider is not None:
                    provider.close()
                made = self._make_provider(pool)
                if made is None:
                    continue  # left out until its declaration is fixed
                self.pools.providers[pool.name] = made
            self.pools.specs[pool.name] = pool

    def _make_provider(self, pool: PoolSpec) -> Provider | None:
        try:
            return provider_class(pool.provider)(pool, self.join)
        except ClobiError as exc:
            text = f"pool {pool.name}: its provider cannot start: {exc}"
            if text != self._reported_error:
                log.error("%s", text)
                self.store.record_event("manager_config_error", text)
                self._reported_error = text
            return None

    def _observed_pools(self, config: PoolConfig) -> tuple[PoolSpec, ...]:
        """The declared pools whose provider runs, and retired pools (bounds 0)."""
        declared = {p.name for p in config.pools}
        retired = tuple(s for n, s in self.pools.specs.items() if n not in declared)
        working = tuple(p for p in config.pools if p.name in self.pools.providers)
        return (*working, *retired)


def agent_views(store: Store, now: float) -> list[AgentView]:
    """Every live agent with what its jobs use and how long it has been idle."""
    loads = {load.agent_id: load for load in store.agent_loads()}
    return [_agent_view(a, loads.get(a.id), now) for a in store.list_agents()]


def _agent_view(a: AgentRecord, load: AgentLoad | None, now: float) -> AgentView:
    used = load or AgentLoad(a.id, 0.0, 0, 0, 0)
    idle_s = now - a.idle_since if used.running == 0 and a.idle_since is not None else 0.0
    return AgentView(
        agent_id=a.id,
        pool=a.pool,
        instance_id=a.instance_id,
        cpus=a.cpus,
        memory_bytes=a.memory_bytes,
        gpus=a.gpus,
        labels=frozenset(a.labels),
        used_cpus=used.cpus,
        used_memory_bytes=used.memory_bytes,
        used_gpus=used.gpus,
        running=used.running,
        draining=a.drain,
        idle_s=max(0.0, idle_s),
    )


def _by_pool(records: Iterable[InstanceRecord]) -> list[tuple[str, list[InstanceRecord]]]:
    groups: dict[str, list[InstanceRecord]] = {}
    for r in records:
        groups.setdefault(r.pool, []).append(r)
    return list(groups.items())


def _same_machines(a: PoolSpec, b: PoolSpec) -> bool:
    """Whether two declarations of a pool start the same machines (bounds aside)."""
    return (a.provider, dict(a.settings), a.slots) == (b.provider, dict(b.settings), b.slots)


def join_info(session: Session, store: Store, url: str | None) -> JoinInfo:
    """How machines started by this session's manager reach it."""
    import sys

    return JoinInfo(
        url=url, session_root=session.root, python=sys.executable, session_id=session_id(store)
    )


def record_launch(store: Store, instance_id: int, provider_id: str) -> None:
    """The provider has the machine: `booting`, unless its agent was quicker and already
    joined (then it stays `running`); either way its provider id is kept."""
    if not store.set_instance(
        instance_id,
        InstanceState.BOOTING,
        "launched",
        provider_id=provider_id,
        expect=(InstanceState.REQUESTED,),
    ):
        store.set_instance(
            instance_id,
            InstanceState.RUNNING,
            "its agent joined",
            provider_id=provider_id,
            expect=(InstanceState.RUNNING,),
        )
