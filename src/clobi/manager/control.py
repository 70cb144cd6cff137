"""What people do to pools and instances (the CLI, the console, the dashboard): drain or
hard-kill instances, see what each pool has and costs. The manager carries the rest out at
its next tick."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clobi.errors import NotFound
from clobi.model.instances import InstanceRecord, InstanceState
from clobi.model.pools import PoolSpec
from clobi.model.records import AgentRecord
from clobi.store.base import Store


@dataclass(frozen=True)
class PoolStatus:
    """A pool with its live instances and agents, and what it has cost so far."""

    pool: PoolSpec
    instances: tuple[InstanceRecord, ...]
    agents: tuple[AgentRecord, ...]
    cost: float

    def count(self, *states: InstanceState) -> int:
        return sum(1 for i in self.instances if i.state in states)

    @property
    def busy_agents(self) -> int:
        return sum(1 for a in self.agents if a.running)


def pool_statuses(store: Store, pools: Sequence[PoolSpec], now: float) -> list[PoolStatus]:
    """Every declared pool with its live instances, agents and its cost (all instances)."""
    everything = store.list_instances(include_ended=True)
    agents = store.list_agents()
    return [
        PoolStatus(
            pool=p,
            instances=tuple(i for i in everything if i.pool == p.name and not i.state.ended),
            agents=tuple(a for a in agents if a.pool == p.name),
            cost=sum(i.cost(now) for i in everything if i.pool == p.name),
        )
        for p in pools
    ]


def pick_instances(store: Store, pool: str, ids: Sequence[int] = ()) -> list[InstanceRecord]:
    """The live instances of `pool` (only `ids`, all of which must be there, when given)."""
    live = store.list_instances(pool)
    if not ids:
        return live
    found = {i.id: i for i in live}
    missing = [i for i in ids if i not in found]
    if missing:
        shown = ", ".join(str(i) for i in missing)
        raise NotFound(f"pool {pool}: no live instance {shown}")
    return [found[i] for i in ids]


def drain(store: Store, instances: Iterable[InstanceRecord], why: str) -> list[int]:
    """Soft kill: each instance's agent stops claiming and finishes its jobs; the manager
    terminates the instance once the agent has left. Returns the instances now draining."""
    done = []
    for inst in instances:
        expect = (InstanceState.REQUESTED, InstanceState.BOOTING, InstanceState.RUNNING)
        if store.set_instance(inst.id, InstanceState.DRAINING, why, expect=expect):
            done.append(inst.id)
        if inst.agent_id is not None:
            store.set_drain(inst.agent_id)
    return done


def hard_kill(
    store: Store, instances: Iterable[InstanceRecord], why: str, lost_cap: int
) -> list[int]:
    """Hard kill: each instance's running jobs are requeued now and the manager terminates
    the machine at its next tick. Returns the jobs requeued."""
    requeued: list[int] = []
    for inst in instances:
        if store.set_instance(inst.id, InstanceState.TERMINATING, why) and inst.agent_id:
            result = store.abandon_agent(inst.agent_id, f"instance {inst.id}: {why}", lost_cap)
            requeued.extend(result.requeued_jobs)
    return requeued


def why_job(root: Path, store: Store, job_id: int, now: float) -> list[str]:
    """`clobi why`: the job, its requirement, the session's pools, the live agents and the
    manager's last verdicts, explained (`clobi.manager.why`)."""
    from clobi.manager.config import read_pools
    from clobi.manager.loop import VERDICTS_KEY, agent_views
    from clobi.manager.plan import Requirement
    from clobi.manager.why import explain
    from clobi.session import CONFIG_NAME

    job = store.get_job(job_id)
    spec, _ = store.job_spec(job_id)
    res = spec.resources
    need = Requirement(res.cpus, res.memory_bytes, res.gpus, frozenset(spec.requires))
    pools = read_pools(root / CONFIG_NAME).pools
    raw = store.get_meta(VERDICTS_KEY)
    verdicts = json.loads(raw) if raw else None
    return explain(job, need, pools, agent_views(store, now), verdicts, now=now)
