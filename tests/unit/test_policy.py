"""The manager's policy: from one observation to one decision, as plain tables."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

import pytest

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
)
from clobi.manager.policy import decide
from clobi.model.instances import InstanceRecord, InstanceState
from clobi.model.pools import GIB, ManagerSettings, PoolSpec

NOW = 100_000.0
OWNED = PoolSpec("owned", "local", cpus=2, memory_bytes=4 * GIB, max=2)
CLOUD = PoolSpec(
    "cloud", "simulated", cpus=2, memory_bytes=4 * GIB, cost_per_hour=0.10, max=6,
    idle_timeout_s=60, boot_timeout_s=300,
)  # fmt: skip
PRICEY = PoolSpec("pricey", "ec2", cpus=2, memory_bytes=4 * GIB, cost_per_hour=0.50, max=10)
GPU = PoolSpec("gpu", "ec2", cpus=4, memory_bytes=16 * GIB, gpus=2, cost_per_hour=1.0, max=4)

S, R, B, D, T = (
    InstanceState.REQUESTED,
    InstanceState.RUNNING,
    InstanceState.BOOTING,
    InstanceState.DRAINING,
    InstanceState.TERMINATING,
)
LAUNCH, DRAIN, TERMINATE = ActionKind.LAUNCH, ActionKind.DRAIN, ActionKind.TERMINATE
T_ = TypeVar("T_")


# -- factories ---------------------------------------------------------------------------------


def pool(base: PoolSpec = CLOUD, **changes: object) -> PoolSpec:
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def jobs(
    queued: int,
    *,
    cpus: float = 1,
    memory_bytes: int = 1 * GIB,
    gpus: int = 0,
    labels: Sequence[str] = (),
    priority: int = 0,
) -> Demand:
    return Demand(Requirement(cpus, memory_bytes, gpus, frozenset(labels)), priority, queued)


def agent(
    agent_id: int,
    pool_name: str = "cloud",
    instance_id: int | None = None,
    *,
    running: int = 0,
    idle_s: float = 0.0,
    draining: bool = False,
    cpus: float = 2,
    memory_bytes: int = 4 * GIB,
    labels: Sequence[str] = (),
) -> AgentView:
    """An agent whose `running` jobs use 1 cpu and 1GiB each."""
    return AgentView(
        agent_id, pool_name, instance_id, cpus, memory_bytes, 0, frozenset(labels),
        used_cpus=running, used_memory_bytes=running * GIB, used_gpus=0, running=running,
        draining=draining, idle_s=0.0 if running else idle_s,
    )  # fmt: skip


def instance(
    instance_id: int,
    pool_name: str = "cloud",
    state: InstanceState = R,
    *,
    agent: AgentView | None = None,
    provider: ProviderState = ProviderState.RUNNING,
    age_s: float = 30.0,
    launched: bool = True,
    cost_per_hour: float | None = None,
) -> InstanceView:
    """An instance created `age_s` ago (and launched then, unless `launched=False`)."""
    cost = {"cloud": 0.10, "pricey": 0.50}.get(pool_name, 0.0)
    record = InstanceRecord(
        instance_id, pool_name, "simulated", f"i-{instance_id}", state,
        cost if cost_per_hour is None else cost_per_hour, created_at=NOW - age_s,
        launched_at=NOW - age_s if launched else None, ready_at=None, ended_at=None,
        agent_id=agent.agent_id if agent else None, reason="",
    )  # fmt: skip
    return InstanceView(record, agent, provider)


def up(instance_id: int, pool_name: str = "cloud", **agent_kw: object) -> InstanceView:
    """A running instance with its agent (agent id = instance id)."""
    a = agent(instance_id, pool_name, instance_id, **agent_kw)  # type: ignore[arg-type]
    return instance(instance_id, pool_name, R, agent=a)


def booting(instance_id: int, pool_name: str = "cloud", age_s: float = 30.0) -> InstanceView:
    return instance(instance_id, pool_name, B, provider=ProviderState.PENDING, age_s=age_s)


def observe(
    *demand: Demand,
    pools: Sequence[PoolSpec] = (OWNED, CLOUD),
    instances: Sequence[InstanceView] = (),
    agents: Sequence[AgentView] = (),
    budget: float | None = None,
    votes: dict[str, int] | None = None,
    idle_votes: int = 3,
) -> Observation:
    """Every instance's agent is also among the live agents."""
    joined = tuple(v.agent for v in instances if v.agent is not None)
    return Observation(
        now=NOW,
        pools=tuple(pools),
        settings=ManagerSettings(budget_per_hour=budget, idle_votes=idle_votes),
        demand=demand,
        instances=tuple(instances),
        agents=(*agents, *joined),
        idle_votes=votes or {},
    )


def launches(decision: Decision) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for a in decision.actions:
        if a.kind is LAUNCH:
            counts[a.pool] += a.count
    return dict(counts)


def touched(decision: Decision) -> list[tuple[ActionKind, tuple[int, ...]]]:
    """The drain and terminate actions, as (kind, instance ids)."""
    return [(a.kind, a.instance_ids) for a in decision.actions if a.kind is not LAUNCH]


def only(items: Sequence[T_]) -> T_:
    assert len(items) == 1, items
    return items[0]


def verdict_text(decision: Decision) -> str:
    return only(decision.verdicts).text


# -- demand: classes, packing, priority --------------------------------------------------------


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        (jobs(4, cpus=1), 2),  # a 2-cpu instance holds two 1-cpu jobs
        (jobs(3, cpus=1), 2),
        (jobs(3, cpus=2), 3),
        (jobs(8, cpus=0.5), 2),
        (jobs(4, cpus=0.5, memory_bytes=3 * GIB), 4),  # memory holds only one
        (jobs(5, cpus=0.5, memory_bytes=2 * GIB), 3),
    ],
)
def test_jobs_are_packed_into_the_slots_of_new_instances(demand: Demand, expected: int) -> None:
    decision = decide(observe(demand, pools=[pool(max=100)]))
    assert launches(decision) == {"cloud": expected}


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        (jobs(1, cpus=2), {"cloud": 1}),
        (jobs(1, cpus=3), {"gpu": 1}),  # only the gpu pool has 4 cpus
        (jobs(4, gpus=1), {"gpu": 2}),  # two gpus per instance
        (jobs(1, memory_bytes=8 * GIB), {"gpu": 1}),
        (jobs(1, labels=["ssd"]), {"pricey": 1}),
        (jobs(1, labels=["ssd", "linux"]), {"pricey": 1}),
        (jobs(1, labels=["ssd", "arm"]), {}),
    ],
)
def test_a_class_is_served_only_by_pools_whose_slots_fit_one_job(
    demand: Demand, expected: dict[str, int]
) -> None:
    pools = [CLOUD, pool(PRICEY, labels=frozenset({"ssd", "linux"})), GPU]
    assert launches(decide(observe(demand, pools=pools))) == expected


def test_a_class_no_pool_can_serve_is_told_which_pools_exist() -> None:
    decision = decide(observe(jobs(3, gpus=1, labels=["ssd"])))
    assert not decision.actions
    verdict = only(decision.verdicts)
    assert verdict.queued == 3
    assert verdict.text == (
        "no pool offers 1 cpu, 1GiB, 1 gpu, labels ssd"
        " (pools: owned 2 cpus, 4GiB; cloud 2 cpus, 4GiB)"
    )


@pytest.mark.parametrize("reverse", [False, True])
def test_higher_priority_demand_is_served_first_when_capacity_is_limited(reverse: bool) -> None:
    low = jobs(2, cpus=1, priority=0)
    high = jobs(1, cpus=2, priority=5)
    demand = [high, low][:: -1 if reverse else 1]
    decision = decide(observe(*demand, pools=[pool(max=1)]))
    assert launches(decision) == {"cloud": 1}
    texts = {v.requirement: v.text for v in decision.verdicts}
    assert texts[high.requirement] == "launching 1 instance of pool cloud"
    assert texts[low.requirement] == "pool cloud is at its max (1)"


def test_one_class_queued_at_several_priorities_gets_one_verdict_and_one_launch() -> None:
    decision = decide(observe(jobs(2, priority=1), jobs(3, priority=7), pools=[CLOUD]))
    assert launches(decision) == {"cloud": 3}
    assert only(decision.actions).reason.startswith("5 jobs of 1 cpu, 1GiB queued")
    assert only(decision.verdicts).queued == 5


# -- free and booting capacity -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("agents", "instances", "expected"),
    [
        ([], [], 3),
        ([agent(1, "mine")], [], 2),  # a contributed machine's 2 free cpus
        ([agent(1, "mine", running=1)], [], 2),  # 1 free cpu: 4 left
        ([agent(1, "mine", running=2)], [], 3),
        ([agent(1, "mine", draining=True)], [], 3),  # a draining agent claims nothing
        ([agent(1, "mine", labels=["x"]), agent(2, "mine", cpus=8)], [], 0),
        ([], [up(1)], 2),
        ([], [up(1, running=2)], 3),
        ([], [instance(1, state=D, agent=agent(1, instance_id=1))], 3),  # draining instance
        ([], [booting(1)], 2),  # a booting instance counts as its pool's full slots
        ([], [booting(1), booting(2), booting(3)], 0),
        ([], [instance(1, state=S, launched=False, provider=ProviderState.PENDING)], 2),
        ([], [instance(1, state=T)], 3),  # terminating: no capacity
    ],
)
def test_free_and_booting_capacity_absorbs_demand_before_anything_is_launched(
    agents: list[AgentView], instances: list[InstanceView], expected: int
) -> None:
    decision = decide(observe(jobs(5), pools=[CLOUD], agents=agents, instances=instances))
    assert launches(decision) == ({"cloud": expected} if expected else {})


def test_a_launch_names_the_queued_jobs_the_free_and_booting_slots_and_the_cost() -> None:
    obs = observe(jobs(9), pools=[CLOUD], agents=[agent(7, "mine", running=1)],
                  instances=[booting(1)])  # fmt: skip
    assert only(decide(obs).actions) == Action(
        LAUNCH,
        "cloud",
        "9 jobs of 1 cpu, 1GiB queued; 1 fit in free slots, 2 in booting instances;"
        " launching 3 of pool cloud (0.10/h)",
        count=3,
    )


def test_room_left_on_an_instance_launched_for_one_class_serves_another() -> None:
    decision = decide(observe(jobs(1, cpus=1, priority=1), jobs(1, cpus=1, memory_bytes=2 * GIB),
                              pools=[CLOUD]))  # fmt: skip
    assert launches(decision) == {"cloud": 1}


# -- pools: cost order, max, min, budget -------------------------------------------------------


@pytest.mark.parametrize(
    ("pools", "queued", "expected"),
    [
        ([PRICEY, CLOUD, OWNED], 2, {"owned": 2}),
        ([PRICEY, CLOUD, OWNED], 10, {"owned": 2, "cloud": 6, "pricey": 2}),
        ([pool(name="b"), pool(name="a")], 1, {"a": 1}),  # equal cost: by name
        ([pool(name="a", order=2), pool(name="b", order=1)], 1, {"b": 1}),  # then by order
        ([pool(name="a", cost_per_hour=0.2), pool(name="b", order=9)], 1, {"b": 1}),
    ],
)
def test_pools_fill_in_cost_order_owned_first_then_by_order_and_name(
    pools: list[PoolSpec], queued: int, expected: dict[str, int]
) -> None:
    assert launches(decide(observe(jobs(queued, cpus=2), pools=pools))) == expected


def test_a_pool_s_max_counts_running_draining_and_booting_instances_but_not_terminating() -> None:
    instances = [
        up(1, running=2),
        instance(2, state=D, agent=agent(2, instance_id=2, running=2, draining=True)),
        booting(3),
        instance(4, state=S, launched=False, provider=ProviderState.PENDING),
        instance(5, state=T),
    ]
    decision = decide(observe(jobs(20, cpus=2), pools=[CLOUD], instances=instances))
    assert launches(decision) == {"cloud": 2}
    assert verdict_text(decision) == (
        "waiting for 2 booting instances of pool cloud; launching 2 instances of pool cloud;"
        " the other 16 wait: pool cloud is at its max (6)"
    )


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(None, 4), (1.0, 4), (0.40, 2), (0.35, 1), (0.30, 1), (0.20, 0), (0.0, 0)],
)
def test_the_cost_of_live_and_new_instances_stays_within_the_budget(
    budget: float | None, expected: int
) -> None:
    obs = observe(jobs(20, cpus=2), pools=[CLOUD], instances=[up(1, running=2), up(2, running=2)],
                  budget=budget)  # fmt: skip
    assert launches(decide(obs)) == ({"cloud": expected} if expected else {})


def test_owned_pools_cost_nothing_so_the_budget_never_stops_them() -> None:
    decision = decide(observe(jobs(8, cpus=2), pools=[OWNED, CLOUD], budget=0.1))
    assert launches(decision) == {"owned": 2, "cloud": 1}
    assert verdict_text(decision).endswith(
        "the other 5 wait: pool owned is at its max (2); budget reached (0.10/h)"
    )


@pytest.mark.parametrize(
    ("instances", "budget", "expected"),
    [
        ([], None, 2),
        ([up(1)], None, 1),
        ([booting(1)], None, 1),
        ([up(1), up(2)], None, 0),
        ([instance(1, state=D, agent=agent(1, instance_id=1, draining=True, running=1))], None, 2),
        ([], 0.1, 1),
    ],
)
def test_pools_are_kept_at_their_min_without_demand(
    instances: list[InstanceView], budget: float | None, expected: int
) -> None:
    decision = decide(observe(pools=[pool(min=2)], instances=instances, budget=budget))
    if expected == 0:
        assert not decision.actions
        return
    action = only(decision.actions)
    assert (action.kind, action.count) == (LAUNCH, expected)
    assert action.reason.startswith("min 2 of pool cloud:")


def test_instances_launched_for_min_absorb_demand() -> None:
    decision = decide(observe(jobs(2), pools=[pool(OWNED, min=1)]))
    assert launches(decision) == {"owned": 1}
    assert verdict_text(decision) == "launching 1 instance of pool owned"


# -- instances that never arrive, vanish or get a preemption notice ----------------------------


@pytest.mark.parametrize(
    ("view", "terminated"),
    [
        (booting(1, age_s=299), False),
        (booting(1, age_s=300), True),
        (instance(1, state=S, launched=False, age_s=301, provider=ProviderState.PENDING), True),
        (instance(1, state=S, launched=False, age_s=100, provider=ProviderState.PENDING), False),
        (instance(1, state=B, agent=agent(1, instance_id=1), age_s=900), False),  # it joined
    ],
)
def test_an_instance_whose_agent_does_not_join_within_boot_timeout_is_terminated(
    view: InstanceView, terminated: bool
) -> None:
    decision = decide(observe(pools=[CLOUD], instances=[view]))
    expected = [(TERMINATE, (1,))] if terminated else []
    assert touched(decision) == expected
    if terminated:
        assert decision.actions[0].reason == "did not join within boot_timeout (5m)"


def test_a_never_arrived_instance_frees_its_place_for_a_replacement() -> None:
    obs = observe(jobs(2, cpus=2), pools=[pool(max=2)], instances=[booting(1, age_s=400)])
    decision = decide(obs)
    assert touched(decision) == [(TERMINATE, (1,))]
    assert launches(decision) == {"cloud": 2}


@pytest.mark.parametrize(
    ("view", "kind", "reason"),
    [
        (up(1, running=2), None, None),
        (dataclasses.replace(up(1, running=2), provider_state=ProviderState.GONE), TERMINATE,
         "gone at the provider"),
        (dataclasses.replace(booting(1), provider_state=ProviderState.GONE), TERMINATE,
         "gone at the provider"),
        (dataclasses.replace(instance(1, state=T), provider_state=ProviderState.GONE), TERMINATE,
         "gone at the provider"),
        (dataclasses.replace(up(1, running=2), provider_state=ProviderState.PREEMPTING), DRAIN,
         "preemption notice"),
        (dataclasses.replace(booting(1), provider_state=ProviderState.PREEMPTING), TERMINATE,
         "preemption notice; no agent to drain"),
    ],
)  # fmt: skip
def test_the_provider_s_word_gone_terminates_and_preempting_drains_even_a_busy_instance(
    view: InstanceView, kind: ActionKind | None, reason: str | None
) -> None:
    decision = decide(observe(pools=[CLOUD], instances=[view]))
    expected = [] if kind is None else [(kind, (1,))]
    assert touched(decision) == expected
    assert [a.reason for a in decision.actions] == ([] if reason is None else [reason])


def test_a_preempted_instance_offers_no_room_so_its_queued_work_goes_elsewhere() -> None:
    view = dataclasses.replace(up(1), provider_state=ProviderState.PREEMPTING)
    decision = decide(observe(jobs(2), pools=[CLOUD], instances=[view]))
    assert touched(decision) == [(DRAIN, (1,))]
    assert launches(decision) == {"cloud": 1}


# -- scale in ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("carried", "votes", "drained"),
    [(None, 1, False), (1, 2, False), (2, 3, True), (7, 8, True)],
)
def test_a_pool_scales_in_only_after_enough_consecutive_idle_votes(
    carried: int | None, votes: int, drained: bool
) -> None:
    obs = observe(pools=[CLOUD], instances=[up(1, idle_s=60)],
                  votes=None if carried is None else {"cloud": carried})  # fmt: skip
    decision = decide(obs)
    assert decision.idle_votes == {"cloud": votes}
    assert touched(decision) == ([(DRAIN, (1,))] if drained else [])


@pytest.mark.parametrize(
    ("cloud", "view", "demand"),
    [
        (CLOUD, up(1, running=1), []),  # busy
        (CLOUD, up(1, idle_s=59), []),  # not idle for idle_timeout yet
        (CLOUD, up(1, idle_s=600), [jobs(1)]),  # a queued job will land on it
        (CLOUD, up(1, idle_s=600, draining=True), []),  # already leaving
        (pool(min=1), up(1, idle_s=600), []),  # at its min
    ],
)
def test_idle_votes_start_over_when_the_pool_is_not_idle(
    cloud: PoolSpec, view: InstanceView, demand: list[Demand]
) -> None:
    decision = decide(observe(*demand, pools=[cloud], instances=[view], votes={"cloud": 5}))
    assert "cloud" not in decision.idle_votes
    assert not touched(decision)


def test_idle_agents_are_drained_longest_idle_first_and_never_below_min() -> None:
    instances = [up(1, idle_s=100), up(2, idle_s=900), up(3, idle_s=500), up(4, running=1)]
    decision = decide(observe(pools=[pool(min=2)], instances=instances, votes={"cloud": 2}))
    drain = only(decision.actions)
    assert (drain.kind, drain.instance_ids) == (DRAIN, (2, 3))
    assert drain.reason == (
        "pool cloud idle for 3 observations; 4 live, min 2; draining 2 agents idle for over 1m"
    )


@pytest.mark.parametrize(
    ("instances", "drained"),
    [
        ([up(1, idle_s=900), up(2, idle_s=100)], (1,)),
        ([up(1, idle_s=100), up(2, idle_s=900)], (2,)),
        ([up(1, idle_s=900), up(2, running=1)], (1,)),  # the busy agent's free cpu takes it
    ],
)
def test_queued_jobs_are_expected_on_busy_then_recently_idle_agents_so_the_longest_idle_go(
    instances: list[InstanceView], drained: tuple[int, ...]
) -> None:
    obs = observe(jobs(1), pools=[CLOUD], instances=instances, votes={"cloud": 2})
    assert touched(decide(obs)) == [(DRAIN, drained)]


def test_a_pool_that_grows_in_this_decision_does_not_vote_idle() -> None:
    small = up(1, idle_s=900, cpus=1)  # its agent offers less than the pool's slots
    decision = decide(
        observe(jobs(1, cpus=2), pools=[CLOUD], instances=[small], votes={"cloud": 5})
    )
    assert launches(decision) == {"cloud": 1}
    assert not touched(decision) and not decision.idle_votes


def test_booting_instances_nobody_needs_go_before_running_ones_when_shrinking() -> None:
    instances = [up(1, idle_s=900), booting(2, age_s=100), booting(3, age_s=10)]
    obs = observe(pools=[pool(min=1)], instances=instances, votes={"cloud": 2})
    assert touched(decide(obs)) == [(TERMINATE, (3, 2))]
    obs = observe(pools=[CLOUD], instances=instances, votes={"cloud": 2})
    assert touched(decide(obs)) == [(TERMINATE, (3, 2)), (DRAIN, (1,))]


def test_booting_instances_still_needed_are_kept_and_a_spare_one_goes() -> None:
    instances = [booting(1, age_s=100), booting(2, age_s=10)]
    obs = observe(jobs(2), pools=[CLOUD], instances=instances, votes={"cloud": 2})
    assert touched(decide(obs)) == [(TERMINATE, (2,))]


@pytest.mark.parametrize(
    ("drainer", "terminated"),
    [
        (None, True),  # its agent has left
        (agent(1, instance_id=1, draining=True), True),
        (agent(1, instance_id=1, draining=True, running=1), False),  # still finishing a job
        (agent(1, instance_id=1, idle_s=900), False),  # has not heard of the drain yet
    ],
)
def test_a_draining_instance_is_terminated_once_its_agent_finished_or_left(
    drainer: AgentView | None, terminated: bool
) -> None:
    view = instance(1, state=D, agent=drainer)
    decision = decide(observe(pools=[CLOUD], instances=[view], votes={"cloud": 9}))
    assert touched(decision) == ([(TERMINATE, (1,))] if terminated else [])


@pytest.mark.parametrize(
    "view",
    [
        up(1, running=1),
        instance(1, state=D, agent=agent(1, instance_id=1, draining=True, running=2)),
        instance(1, state=B, agent=agent(1, instance_id=1, running=1), age_s=3600),
        instance(1, agent=dataclasses.replace(agent(1, instance_id=1, running=1), idle_s=900)),
    ],
)
def test_a_busy_instance_is_never_drained_or_terminated(view: InstanceView) -> None:
    quiet = pool(min=0, idle_timeout_s=1, boot_timeout_s=1)
    decision = decide(observe(pools=[quiet], instances=[view], votes={"cloud": 99}, idle_votes=1))
    assert not decision.actions


# -- verdicts and determinism ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obs", "text"),
    [
        (observe(jobs(1), agents=[agent(1, "mine")]),
         "an agent has room; the job should start at the next claim"),
        (observe(jobs(3), agents=[agent(1, "mine", cpus=4)]),
         "agents have room for 3; they should start at the next claim"),
        (observe(jobs(4), pools=[CLOUD], instances=[booting(1), booting(2)]),
         "waiting for 2 booting instances of pool cloud"),
        (observe(jobs(1, cpus=2), pools=[pool(max=0)]), "pool cloud is at its max (0)"),
        (observe(jobs(1, cpus=2), pools=[CLOUD, PRICEY], instances=[up(1, running=2)],
                 budget=0.15), "budget reached (0.15/h)"),
        (observe(jobs(5, cpus=2), pools=[OWNED, pool(max=1)], budget=5.0),
         "launching 2 instances of pool owned; launching 1 instance of pool cloud;"
         " the other 2 wait: pool owned is at its max (2); pool cloud is at its max (1)"),
        (observe(jobs(3), agents=[agent(1, "mine")], pools=[pool(max=0)]),
         "agents have room for 2; they should start at the next claim;"
         " the other 1 wait: pool cloud is at its max (0)"),
    ],
)  # fmt: skip
def test_every_class_of_queued_jobs_gets_a_sentence_saying_why_it_waits(
    obs: Observation, text: str
) -> None:
    assert verdict_text(decide(obs)) == text


def test_the_same_observation_in_any_order_gives_the_same_decision() -> None:
    instances = [up(1, idle_s=900), booting(2), up(3, running=1), booting(4, age_s=999)]
    demand = [jobs(3), jobs(2, cpus=2, priority=3), jobs(1, gpus=1)]
    pools = [OWNED, CLOUD, GPU]
    first = decide(observe(*demand, pools=pools, instances=instances, votes={"cloud": 4}))
    second = decide(observe(*demand[::-1], pools=pools[::-1], instances=instances[::-1],
                            votes={"cloud": 4}))  # fmt: skip
    assert first == second
    assert first.actions  # the comparison is about something
