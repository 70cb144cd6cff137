"""`clobi why JOB`: why a job is still queued, in sentences. Pure: the caller gathers the job,
its requirement, the pools, the live agents and the manager's last verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clobi.manager.plan import AgentView, Requirement
from clobi.model.pools import PoolSpec, describe_slots
from clobi.model.records import JobRecord
from clobi.model.states import JobState
from clobi.model.units import format_duration


def fits_pool(pool: PoolSpec, need: Requirement) -> bool:
    """Whether one instance of the pool can hold one job of the requirement."""
    return (
        need.cpus <= pool.cpus
        and need.memory_bytes <= pool.memory_bytes
        and need.gpus <= pool.gpus
        and need.labels <= pool.labels
    )


def fits_agent(agent: AgentView, need: Requirement, free: bool) -> bool:
    """Whether the agent could hold the job (with `free`: right now, beside its jobs)."""
    cpus, memory, gpus = agent.cpus, agent.memory_bytes, agent.gpus
    if free:
        cpus, memory = cpus - agent.used_cpus, memory - agent.used_memory_bytes
        gpus -= agent.used_gpus
    return (
        need.cpus <= cpus + 1e-9
        and need.memory_bytes <= memory
        and need.gpus <= gpus
        and need.labels <= agent.labels
    )


def explain(
    job: JobRecord,
    need: Requirement,
    pools: Sequence[PoolSpec],
    agents: Sequence[AgentView],
    verdicts: Sequence[Mapping[str, Any]] | None,
    *,
    now: float,
) -> list[str]:
    """Sentences saying where the job is and, if it waits, why."""
    if job.state is not JobState.QUEUED:
        return [_not_queued(job)]
    lines = [f"job {job.id} is queued (priority {job.priority}); it needs {need.describe()}"]
    if job.not_before > now:
        lines.append(
            f"it is backing off before a retry: {format_duration(job.not_before - now)} left"
        )
    lines.append(_pools_line(need, pools))
    lines.append(_agents_line(need, agents))
    lines.append(_manager_line(need, verdicts, now))
    return lines


def _not_queued(job: JobRecord) -> str:
    if job.state is JobState.RUNNING:
        return f"job {job.id} is running (attempt {job.current_attempt}); it is not waiting"
    ended = f"job {job.id} has ended: {job.state.value}"
    return f"{ended} ({job.reason})" if job.reason else ended


def _pools_line(need: Requirement, pools: Sequence[PoolSpec]) -> str:
    if not pools:
        return (
            "no pools are declared (clobi.toml [pools.NAME]): only agents started by hand run jobs"
        )
    fitting = [p.name for p in pools if fits_pool(p, need)]
    if fitting:
        return f"pools that can run it: {', '.join(fitting)}"
    offered = "; ".join(f"{p.name}: {describe_slots(p)}" for p in pools)
    return f"no pool offers {need.describe()} (pools: {offered}): it will wait until one does"


def _agents_line(need: Requirement, agents: Sequence[AgentView]) -> str:
    live = [a for a in agents if not a.draining]
    able = [a for a in live if fits_agent(a, need, free=False)]
    free = [a for a in able if fits_agent(a, need, free=True)]
    if free:
        ids = ", ".join(str(a.agent_id) for a in free[:10])
        return (
            f"{len(free)} agent(s) have room for it now (ids {ids}): it starts at their next claim"
        )
    if able:
        return (
            f"all {len(able)} agent(s) that can run it are busy; it waits its turn (priority, age)"
        )
    if live:
        return f"none of the {len(live)} live agent(s) can run it (too small or missing labels)"
    return "no agent is running"


def _manager_line(
    need: Requirement, verdicts: Sequence[Mapping[str, Any]] | None, now: float
) -> str:
    if verdicts is None:
        return "no resource manager has run in this session (clobi manager, or a server with pools)"
    for v in verdicts:
        if v.get("requirement") == need.key:
            age = format_duration(max(0.0, now - float(v.get("ts", now))))
            return f"the manager, {age} ago: {v.get('text', '')}"
    return "the manager's last decision covers its jobs (nothing is missing for them)"
