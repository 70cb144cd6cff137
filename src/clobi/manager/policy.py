"""The resource manager's policy: a pure `decide(observation) -> decision`.

No I/O and no clock (time is `observation.now`); the same observation always gives the same
decision. One decision, in this order:

1. health: instances gone at the provider are terminated (the loop records them and requeues
   their jobs), preempted ones drained, never-joined ones terminated after `boot_timeout`,
   drained ones terminated;
2. pools below their `min` are topped up;
3. demand, highest priority first, is packed into free agent slots, then booting instances,
   then new instances of the cheapest pools that fit, within each pool's `max` and the budget;
4. pools with surplus (booting instances nobody needs, agents idle past `idle_timeout`) vote
   idle; after `idle_votes` consecutive votes they shrink towards `min`, booting instances
   first, then the longest idle agents (drained before they are terminated).

Busy instances are never drained or terminated, except on a preemption notice (or when the
provider says the machine is already gone).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clobi.manager.plan import (
    Action,
    ActionKind,
    AgentView,
    Decision,
    Demand,
    InstanceView,
    Observation,
    ProviderState,
    Requirement,
    Verdict,
)
from clobi.model.instances import InstanceRecord, InstanceState
from clobi.model.pools import PoolSpec, describe_slots
from clobi.model.units import format_duration

_EPS = 1e-9  # float slack when dividing cpus and money
_UNBOUNDED = 1 << 62
_WAITING = frozenset({InstanceState.REQUESTED, InstanceState.BOOTING})
_OVER = frozenset({InstanceState.TERMINATING, InstanceState.TERMINATED, InstanceState.FAILED})
_FREE, _BOOTING, _NEW = "free", "booting", "new"  # where a job is expected to run


def decide(observation: Observation) -> Decision:
    """What to launch, drain and terminate now, and why each class of queued jobs waits."""
    health = _health(observation)
    work = _Work.start(observation, health)
    _launch_to_min(work)
    for demand in sorted(observation.demand, key=lambda d: (-d.priority, d.requirement.key)):
        if demand.queued > 0:
            _serve(work, demand)
    votes, shrink = _scale_in(work)
    return Decision(
        actions=(*_grouped(health), *work.min_actions, *_launch_actions(work), *shrink),
        verdicts=tuple(_verdict(work, tally) for tally in work.tallies.values()),
        idle_votes=votes,
    )


# -- 1. health of single instances -------------------------------------------------------------


def _health(obs: Observation) -> list[Action]:
    """One action per instance that needs one (its only instance id)."""
    pools = {p.name: p for p in obs.pools}
    steps = (_health_of(v, pools.get(v.record.pool), obs.now) for v in obs.instances)
    return sorted((s for s in steps if s is not None), key=lambda s: s.instance_ids)


def _health_of(view: InstanceView, pool: PoolSpec | None, now: float) -> Action | None:
    rec = view.record
    if rec.state.ended:
        return None
    if view.provider_state is ProviderState.GONE:
        return _one(ActionKind.TERMINATE, rec.pool, "gone at the provider", rec.id)
    if rec.state is InstanceState.TERMINATING or pool is None:
        return None
    if view.provider_state is ProviderState.PREEMPTING and rec.state is not InstanceState.DRAINING:
        return _preempted(view)
    if view.agent is None and rec.state in _WAITING and _age_s(rec, now) >= pool.boot_timeout_s:
        reason = f"did not join within boot_timeout ({format_duration(pool.boot_timeout_s)})"
        return _one(ActionKind.TERMINATE, rec.pool, reason, rec.id)
    if rec.state is InstanceState.DRAINING and _drained(view.agent):
        return _one(ActionKind.TERMINATE, rec.pool, "drained: its agent runs no job", rec.id)
    return None


def _preempted(view: InstanceView) -> Action:
    if view.agent is None:
        reason = "preemption notice; no agent to drain"
        return _one(ActionKind.TERMINATE, view.record.pool, reason, view.record.id)
    return _one(ActionKind.DRAIN, view.record.pool, "preemption notice", view.record.id)


def _drained(agent: AgentView | None) -> bool:
    return agent is None or (agent.draining and agent.running == 0)


def _age_s(rec: InstanceRecord, now: float) -> float:
    return now - (rec.launched_at if rec.launched_at is not None else rec.created_at)


def _one(kind: ActionKind, pool: str, reason: str, instance_id: int) -> Action:
    return Action(kind, pool, reason, instance_ids=(instance_id,))


def _grouped(actions: Iterable[Action]) -> list[Action]:
    """One action per kind, pool and reason, its instances in id order."""
    groups: dict[tuple[ActionKind, str, str], tuple[int, ...]] = {}
    for a in actions:
        key = (a.kind, a.pool, a.reason)
        groups[key] = groups.get(key, ()) + a.instance_ids
    return [Action(k, p, r, instance_ids=ids) for (k, p, r), ids in groups.items()]


# -- the working state of one decision ---------------------------------------------------------


@dataclass
class _Bin:
    """Room for jobs: an agent's free slots, a booting instance, or an instance launched now."""

    kind: str
    pool: str
    instance_id: int | None
    cpus: float
    memory_bytes: int
    gpus: int
    labels: frozenset[str]
    age_s: float = 0.0  # idle time (agents) or time since launch (booting)
    idle: bool = False  # an agent of one of our instances that runs nothing
    seq: int = 0  # place among the decision's bins, which are filled in this order
    jobs: int = 0

    def room_for(self, req: Requirement) -> int:
        """How many more jobs of the class fit."""
        if not req.labels <= self.labels:
            return 0
        cpus, memory = _times(self.cpus, req.cpus), _times(self.memory_bytes, req.memory_bytes)
        return max(0, min(cpus, memory, _times(self.gpus, req.gpus)))

    def take(self, req: Requirement, n: int) -> None:
        self.cpus -= req.cpus * n
        self.memory_bytes -= req.memory_bytes * n
        self.gpus -= req.gpus * n
        self.jobs += n


def _times(have: float, need: float) -> int:
    return math.floor(have / need + _EPS) if need > 0 else _UNBOUNDED


@dataclass
class _Tally:
    """What became of one requirement class's queued jobs."""

    requirement: Requirement
    queued: int = 0
    left: int = 0
    placed: Counter[str] = field(default_factory=Counter)  # jobs per bin kind
    used: set[tuple[str, str, int]] = field(default_factory=set)  # (kind, pool, seq)
    launched: Counter[str] = field(default_factory=Counter)  # new instances per pool
    blocked: dict[str, None] = field(default_factory=dict)  # why no more launched, in order

    def record(self, b: _Bin, n: int) -> None:
        self.placed[b.kind] += n
        self.used.add((b.kind, b.pool, b.seq))

    def instances(self, kind: str) -> Counter[str]:
        """Instances of each pool (in the order they were filled) holding jobs of the class."""
        return Counter(pool for k, pool, _ in sorted(self.used, key=lambda u: u[2]) if k == kind)


@dataclass
class _Work:
    obs: Observation
    pools: list[PoolSpec]  # in fill order
    bins: list[_Bin]
    counted: Counter[str]  # instances that count towards max, per pool (incl. new)
    staying: Counter[str]  # instances that count towards min: not draining nor leaving
    spend: float  # per hour, of counted instances
    new: Counter[str] = field(default_factory=Counter)
    tallies: dict[str, _Tally] = field(default_factory=dict)
    min_actions: list[Action] = field(default_factory=list)

    @classmethod
    def start(cls, obs: Observation, health: Sequence[Action]) -> _Work:
        acted = {a.instance_ids[0]: a.kind for a in health}
        counted = [v for v in obs.instances if _counts(v, acted)]
        staying = [v for v in counted if _stays(v, acted)]
        pools = sorted(obs.pools, key=lambda p: (p.cost_per_hour, p.order, p.name))
        return cls(
            obs=obs,
            pools=pools,
            bins=_numbered(_agent_bins(obs, acted) + _booting_bins(obs, staying)),
            counted=Counter(v.record.pool for v in counted),
            staying=Counter(v.record.pool for v in staying),
            spend=sum(v.record.cost_per_hour for v in counted),
        )

    def add(self, bins: Sequence[_Bin]) -> None:
        self.bins.extend(_numbered(bins, start=len(self.bins)))

    def tally(self, req: Requirement) -> _Tally:
        return self.tallies.setdefault(req.key, _Tally(req))


def _numbered(bins: Sequence[_Bin], start: int = 0) -> list[_Bin]:
    for seq, b in enumerate(bins, start):
        b.seq = seq
    return list(bins)


def _counts(view: InstanceView, acted: Mapping[int, ActionKind]) -> bool:
    rec = view.record
    return rec.state not in _OVER and acted.get(rec.id) is not ActionKind.TERMINATE


def _stays(view: InstanceView, acted: Mapping[int, ActionKind]) -> bool:
    return view.record.state is not InstanceState.DRAINING and view.record.id not in acted


def _agent_bins(obs: Observation, acted: Mapping[int, ActionKind]) -> list[_Bin]:
    views = {v.record.id: v for v in obs.instances}
    agents = [a for a in obs.agents if _claims(a, views, acted)]
    agents.sort(key=lambda a: (a.running == 0, a.idle_s, a.agent_id))  # busy ones fill first
    return [_agent_bin(a, views) for a in agents]


def _claims(a: AgentView, views: Mapping[int, InstanceView], acted: Container[int]) -> bool:
    """Will this agent claim more jobs? Not while it or its instance drains or leaves."""
    view = views.get(a.instance_id) if a.instance_id is not None else None
    if a.draining:
        return False
    if view is None:
        return True  # a contributed machine, not one of our instances
    leaving = view.record.state in _OVER or view.record.state is InstanceState.DRAINING
    return not leaving and view.record.id not in acted


def _agent_bin(a: AgentView, views: Mapping[int, InstanceView]) -> _Bin:
    ours = a.instance_id if a.instance_id in views else None
    free = (a.cpus - a.used_cpus, a.memory_bytes - a.used_memory_bytes, a.gpus - a.used_gpus)
    return _Bin(_FREE, a.pool, ours, *free, a.labels, a.idle_s, ours is not None and a.running == 0)


def _booting_bins(obs: Observation, staying: Iterable[InstanceView]) -> list[_Bin]:
    pools = {p.name: p for p in obs.pools}
    views = [v for v in staying if v.agent is None and v.record.state in _WAITING]
    views = [v for v in views if v.record.pool in pools]
    views.sort(key=lambda v: (-_age_s(v.record, obs.now), v.record.id))  # oldest joins first
    return [
        _pool_bin(_BOOTING, pools[v.record.pool], v.record.id, _age_s(v.record, obs.now))
        for v in views
    ]


def _pool_bin(kind: str, pool: PoolSpec, instance_id: int | None = None, age_s: float = 0) -> _Bin:
    """An instance of the pool with all its slots free."""
    p = pool
    return _Bin(kind, p.name, instance_id, p.cpus, p.memory_bytes, p.gpus, p.labels, age_s)


# -- 2. min and 3. demand ----------------------------------------------------------------------


def _launch_to_min(work: _Work) -> None:
    for pool in work.pools:
        have = work.staying[pool.name]
        n = min(pool.min - have, *_rooms(work, pool))
        if n > 0:
            _launch(work, pool, n)
            reason = f"min {pool.min} of pool {pool.name}: {have} live; launching {n}"
            work.min_actions.append(Action(ActionKind.LAUNCH, pool.name, reason, count=n))


def _rooms(work: _Work, pool: PoolSpec) -> tuple[int, int]:
    """How many more instances of the pool its max allows, and how many the budget allows."""
    budget = work.obs.settings.budget_per_hour
    by_max = max(0, pool.max - work.counted[pool.name])
    if budget is None or pool.cost_per_hour <= 0:
        return by_max, _UNBOUNDED
    return by_max, max(0, math.floor((budget - work.spend) / pool.cost_per_hour + _EPS))


def _launch(work: _Work, pool: PoolSpec, n: int) -> list[_Bin]:
    work.counted[pool.name] += n
    work.staying[pool.name] += n
    work.spend += n * pool.cost_per_hour
    bins = [_pool_bin(_NEW, pool) for _ in range(n)]
    work.new[pool.name] += n
    work.add(bins)
    return bins


def _serve(work: _Work, demand: Demand) -> None:
    tally = work.tally(demand.requirement)
    tally.queued += demand.queued
    left = _place(work.bins, demand.requirement, demand.queued, tally)
    for pool in work.pools:
        if left == 0:
            break
        left = _grow(work, pool, demand.requirement, left, tally)
    tally.left += left


def _place(bins: Iterable[_Bin], req: Requirement, n: int, tally: _Tally) -> int:
    """Packs up to n jobs into the bins in order; returns how many found no room."""
    for b in bins:
        if n == 0:
            break
        k = min(n, b.room_for(req))
        if k > 0:
            b.take(req, k)
            tally.record(b, k)
            n -= k
    return n


def _grow(work: _Work, pool: PoolSpec, req: Requirement, left: int, tally: _Tally) -> int:
    per_instance = _pool_bin(_NEW, pool).room_for(req)
    if per_instance == 0:
        return left
    want = math.ceil(left / per_instance)
    by_max, by_budget = _rooms(work, pool)
    if min(by_max, by_budget) < want:
        tally.blocked[_limit(work, pool, by_max <= by_budget)] = None
    n = min(want, by_max, by_budget)
    if n == 0:
        return left
    tally.launched[pool.name] += n
    return _place(_launch(work, pool, n), req, left, tally)


def _limit(work: _Work, pool: PoolSpec, by_max: bool) -> str:
    if by_max:
        return f"pool {pool.name} is at its max ({pool.max})"
    return f"budget reached ({work.obs.settings.budget_per_hour or 0:.2f}/h)"


def _launch_actions(work: _Work) -> list[Action]:
    pools = {p.name: p for p in work.pools}
    return [
        Action(ActionKind.LAUNCH, name, _launch_reason(t, pools[name], n), count=n)
        for t in work.tallies.values()
        for name, n in t.launched.items()
    ]


def _launch_reason(t: _Tally, pool: PoolSpec, n: int) -> str:
    return (
        f"{_n(t.queued, 'job')} of {t.requirement.describe()} queued; {t.placed[_FREE]} fit in free"
        f" slots, {t.placed[_BOOTING]} in booting instances; launching {n} of pool {pool.name}"
        f" ({pool.cost_per_hour:.2f}/h)"
    )


# -- 4. scale in -------------------------------------------------------------------------------


def _scale_in(work: _Work) -> tuple[dict[str, int], list[Action]]:
    votes: dict[str, int] = {}
    actions: list[Action] = []
    for pool in work.pools:
        surplus = _surplus(work, pool)
        if not surplus:
            continue  # not idle: its count starts over
        votes[pool.name] = work.obs.idle_votes.get(pool.name, 0) + 1
        if votes[pool.name] >= work.obs.settings.idle_votes:
            actions += _shrink(work, pool, surplus, votes[pool.name])
    return votes, actions


def _surplus(work: _Work, pool: PoolSpec) -> list[_Bin]:
    """Instances the pool could lose: unneeded booting ones (newest first), then idle agents
    (longest idle first). None while the pool grows or is at its min."""
    if work.new[pool.name] > 0 or work.staying[pool.name] <= pool.min:
        return []
    mine = [b for b in work.bins if b.pool == pool.name and b.jobs == 0]
    booting = sorted((b for b in mine if b.kind == _BOOTING), key=lambda b: (b.age_s, b.seq))
    idle = [b for b in mine if b.idle and b.age_s >= pool.idle_timeout_s]
    return booting + sorted(idle, key=lambda b: (-b.age_s, b.seq))


def _shrink(work: _Work, pool: PoolSpec, surplus: Sequence[_Bin], votes: int) -> list[Action]:
    have = work.staying[pool.name]
    chosen = surplus[: have - pool.min]
    head = f"pool {pool.name} idle for {votes} observations; {have} live, min {pool.min}"
    booting = tuple(b.instance_id for b in chosen if b.kind == _BOOTING and b.instance_id)
    idle = tuple(b.instance_id for b in chosen if b.kind == _FREE and b.instance_id)
    actions = []
    if booting:
        reason = f"{head}; {_n(len(booting), 'booting instance')} no longer needed"
        actions.append(Action(ActionKind.TERMINATE, pool.name, reason, instance_ids=booting))
    if idle:
        timeout = format_duration(pool.idle_timeout_s)
        reason = f"{head}; draining {_n(len(idle), 'agent')} idle for over {timeout}"
        actions.append(Action(ActionKind.DRAIN, pool.name, reason, instance_ids=idle))
    return actions


# -- verdicts ----------------------------------------------------------------------------------


def _verdict(work: _Work, t: _Tally) -> Verdict:
    covered = _covered(t)
    blocked = _blocked(work, t)
    if covered and blocked:
        blocked = [f"the other {t.left} wait: {blocked[0]}", *blocked[1:]]
    return Verdict(t.requirement, t.queued, "; ".join(covered + blocked))


def _covered(t: _Tally) -> list[str]:
    parts = []
    if t.placed[_FREE] == 1:
        parts.append("an agent has room; the job should start at the next claim")
    elif t.placed[_FREE] > 1:
        parts.append(f"agents have room for {t.placed[_FREE]}; they should start at the next claim")
    for pool, n in t.instances(_BOOTING).items():
        parts.append(f"waiting for {_n(n, 'booting instance')} of pool {pool}")
    for pool, n in t.instances(_NEW).items():
        parts.append(f"launching {_n(n, 'instance')} of pool {pool}")
    return parts


def _blocked(work: _Work, t: _Tally) -> list[str]:
    if t.left == 0:
        return []
    if t.blocked:
        return list(t.blocked)
    offers = "; ".join(f"{p.name} {describe_slots(p)}" for p in work.pools) or "none"
    return [f"no pool offers {t.requirement.describe()} (pools: {offers})"]


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
