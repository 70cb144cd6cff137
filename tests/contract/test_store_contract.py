"""One behavioural suite for the Store contract, run against every engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from clobi.errors import Conflict, NotFound
from clobi.model.auth import Role, TokenRecord
from clobi.model.instances import InstanceState
from clobi.model.records import Event, JobFilter, Outcome
from clobi.model.spec import Retries
from clobi.model.states import AttemptState, JobState
from clobi.store.base import LOG_TAIL_MAX_BYTES, ClaimRequest, LogTail, Store
from tests.conftest import capacity, make_agent, make_submission


def claim(store: Store, agent_id: int, limit: int = 10, lease_s: float = 30.0, **cap: object):
    return store.claim(ClaimRequest(agent_id, capacity(**cap), limit, lease_s))  # type: ignore[arg-type]


def ok(attempt_id: int) -> Outcome:
    return Outcome(attempt_id, AttemptState.SUCCEEDED, exit_code=0, output_inline=b"tar")


def failed(attempt_id: int, user_error: bool = False) -> Outcome:
    return Outcome(
        attempt_id, AttemptState.FAILED, exit_code=3, reason="exit code 3", user_error=user_error
    )


def test_an_array_submit_returns_one_queued_job_per_index_in_order(store: Store) -> None:
    ids = store.submit(make_submission(count=5))
    assert ids == sorted(ids) and len(ids) == 5
    jobs = store.list_jobs(JobFilter(ids=tuple(ids)))
    assert [j.array_index for j in jobs] == [0, 1, 2, 3, 4]
    assert {j.state for j in jobs} == {JobState.QUEUED}


def test_the_same_idempotency_key_twice_gives_one_job(store: Store) -> None:
    first = store.submit(make_submission(idempotency_key="k-1"))
    again = store.submit(make_submission(idempotency_key="k-1"))
    assert first == again
    assert store.count_states()[JobState.QUEUED] == 1


def test_claims_take_higher_priority_first_then_submission_order(store: Store) -> None:
    low = store.submit(make_submission(count=3, priority=0))
    high = store.submit(make_submission(priority=5))
    agent = store.register_agent(make_agent())
    got = [c.job_id for c in claim(store, agent, limit=4, cpus=4)]
    assert got == [high[0], *low]


def test_a_claim_only_takes_jobs_that_fit_the_free_capacity(store: Store) -> None:
    big = store.submit(make_submission(cpus=4))
    small = store.submit(make_submission(cpus=1, count=2))
    gpu = store.submit(make_submission(gpus=1))
    agent = store.register_agent(make_agent())
    got = [c.job_id for c in claim(store, agent, limit=10, cpus=2)]
    assert got == small
    assert store.get_job(big[0]).state is JobState.QUEUED
    assert store.get_job(gpu[0]).state is JobState.QUEUED


def test_a_claim_honours_required_labels(store: Store) -> None:
    job = store.submit(make_submission(requires=("ssd",)))
    agent = store.register_agent(make_agent())
    assert claim(store, agent) == []
    got = claim(store, agent, labels=frozenset({"ssd", "x"}))
    assert [c.job_id for c in got] == job


def test_a_claim_that_finds_nothing_it_may_take_changes_nothing(store: Store) -> None:
    agent = store.register_agent(make_agent())
    assert claim(store, agent) == []  # nothing queued
    (later,) = store.submit(make_submission(retries=Retries(count=1, backoff_s=60)))
    (c,) = claim(store, agent)
    store.finish(agent, [failed(c.attempt_id)])  # queued again, due in a minute
    too_big = store.submit(make_submission(cpus=8))
    labelled = store.submit(make_submission(requires=("ssd",)))
    events = store.events()
    assert claim(store, agent) == []
    assert store.events() == events
    for job_id in (later, *too_big, *labelled):
        assert store.get_job(job_id).state is JobState.QUEUED


def test_a_claim_creates_a_leased_attempt_and_marks_the_job_running(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    before = time.time()
    (c,) = claim(store, agent, lease_s=30)
    assert c.lease_until >= before + 30
    job = store.get_job(job_id)
    assert job.state is JobState.RUNNING and job.current_attempt == c.attempt_id
    (a,) = store.attempts(job_id)
    assert a.state is AttemptState.RUNNING and a.agent_id == agent
    kinds = [e.kind for e in store.events(job_id)]
    assert kinds == ["submitted", "started"]


def test_concurrent_claimers_never_get_the_same_job(store_factory: Callable[[], Store]) -> None:
    setup = store_factory()
    ids = setup.submit(make_submission(count=300))
    got: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        store = store_factory()
        agent = store.register_agent(make_agent(f"a{n}"))
        while mine := claim(store, agent, limit=3, cpus=3):
            with lock:
                got.extend(c.job_id for c in mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ids


def test_a_success_is_recorded_with_its_output(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent)
    refused, _ = store.finish(agent, [ok(c.attempt_id)])
    assert refused == []
    job = store.get_job(job_id)
    assert job.state is JobState.SUCCEEDED and job.exit_code == 0
    ref = store.output_ref(job_id)
    assert ref is not None and ref.inline == b"tar" and ref.attempt_id == c.attempt_id


def test_finishing_can_claim_the_next_job_in_the_same_transaction(store: Store) -> None:
    first, second = store.submit(make_submission(count=2))
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent, limit=1)
    _, more = store.finish(agent, [ok(c.attempt_id)], ClaimRequest(agent, capacity(), 1, 30.0))
    assert c.job_id == first and [m.job_id for m in more] == [second]


def test_a_report_from_a_stale_attempt_is_refused(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent, lease_s=0.05)
    time.sleep(0.1)
    store.sweep(lost_cap=3, agent_timeout_s=60)
    (c2,) = claim(store, agent)
    refused, _ = store.finish(agent, [ok(c.attempt_id)])
    assert refused == [c.attempt_id]
    assert store.get_job(job_id).current_attempt == c2.attempt_id
    assert store.get_job(job_id).state is JobState.RUNNING


def test_another_agent_cannot_report_for_an_attempt(store: Store) -> None:
    store.submit(make_submission())
    owner = store.register_agent(make_agent("owner"))
    other = store.register_agent(make_agent("other"))
    (c,) = claim(store, owner)
    refused, _ = store.finish(other, [ok(c.attempt_id)])
    assert refused == [c.attempt_id]


def test_a_batch_of_reports_is_recorded_as_if_one_at_a_time(store: Store) -> None:
    agent = store.register_agent(make_agent())
    other = store.register_agent(make_agent("agent-2"))
    store.submit(make_submission(count=4, retries=Retries(count=1, backoff_s=60)))
    c0, c1, c2, c3 = claim(store, agent, limit=4)
    (theirs,) = store.submit(make_submission())
    (t,) = claim(store, other)
    store.kill([c2.job_id])
    after = store.events()[-1].id
    outcomes = [failed(c1.attempt_id), ok(c0.attempt_id), ok(c0.attempt_id)]
    outcomes += [failed(c2.attempt_id), ok(t.attempt_id), ok(10**9), ok(c3.attempt_id)]
    refused, _ = store.finish(agent, outcomes)
    assert refused == [c0.attempt_id, t.attempt_id, 10**9]
    state = {c.job_id: store.get_job(c.job_id).state for c in (c0, c1, c2, c3, t)}
    assert state == {
        c0.job_id: JobState.SUCCEEDED,
        c1.job_id: JobState.QUEUED,
        c2.job_id: JobState.CANCELLED,
        c3.job_id: JobState.SUCCEEDED,
        theirs: JobState.RUNNING,
    }
    events = [(e.kind, e.job_id, e.attempt_id) for e in store.events(after_id=after)]
    assert events == [
        ("retry", c1.job_id, c1.attempt_id),
        ("succeeded", c0.job_id, c0.attempt_id),
        ("cancelled", c2.job_id, c2.attempt_id),
        ("succeeded", c3.job_id, c3.attempt_id),
    ]
    assert store.get_job(c1.job_id).retries_left == 0
    assert [a.state for a in store.attempts(c0.job_id)] == [AttemptState.SUCCEEDED]


def test_a_failure_with_retries_left_is_requeued_after_its_backoff(store: Store) -> None:
    retries = Retries(count=1, backoff_s=0.3)
    (job_id,) = store.submit(make_submission(retries=retries))
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent)
    store.finish(agent, [failed(c.attempt_id)])
    job = store.get_job(job_id)
    assert job.state is JobState.QUEUED and job.retries_left == 0
    assert claim(store, agent) == []
    assert 0 < (store.next_due_s() or 0) <= 0.3
    time.sleep(0.35)
    (c2,) = claim(store, agent)
    store.finish(agent, [failed(c2.attempt_id)])
    job = store.get_job(job_id)
    assert job.state is JobState.FAILED and job.attempts == 2 and job.exit_code == 3


def test_a_user_error_fails_the_job_without_retrying(store: Store) -> None:
    (job_id,) = store.submit(make_submission(retries=3))
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent)
    store.finish(agent, [failed(c.attempt_id, user_error=True)])
    assert store.get_job(job_id).state is JobState.FAILED


def test_a_heartbeat_renews_leases_and_reports_cancels_and_drain(store: Store) -> None:
    _job_a, job_b = store.submit(make_submission(count=2))
    agent = store.register_agent(make_agent())
    c1, c2 = claim(store, agent, lease_s=1)
    assert store.kill([job_b]) == [job_b]
    store.set_drain(agent)
    reply = store.heartbeat(agent, [c1.attempt_id, c2.attempt_id], lease_s=60)
    assert reply.renewed == {c1.attempt_id, c2.attempt_id}
    assert reply.cancel == {c2.attempt_id}
    assert reply.drain
    assert reply.lease_until > time.time() + 50


def test_an_expired_lease_is_not_renewed(store: Store) -> None:
    store.submit(make_submission())
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent, lease_s=0.05)
    time.sleep(0.1)
    reply = store.heartbeat(agent, [c.attempt_id], lease_s=60)
    assert reply.renewed == frozenset()


def test_killing_a_queued_job_cancels_it_at_once(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    assert store.kill([job_id]) == [job_id]
    job = store.get_job(job_id)
    assert job.state is JobState.CANCELLED
    assert store.events(job_id)[-1].to_state == "cancelled"


def test_a_killed_running_job_ends_cancelled_when_its_agent_reports(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent)
    store.kill([job_id])
    assert store.get_job(job_id).state is JobState.RUNNING
    store.finish(agent, [Outcome(c.attempt_id, AttemptState.FAILED, exit_code=-15)])
    assert store.get_job(job_id).state is JobState.CANCELLED


def test_an_expired_lease_loses_the_attempt_and_requeues_the_job(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent, lease_s=0.05)
    time.sleep(0.1)
    result = store.sweep(lost_cap=3, agent_timeout_s=60)
    assert result.lost_attempts == (c.attempt_id,) and result.requeued_jobs == (job_id,)
    job = store.get_job(job_id)
    assert job.state is JobState.QUEUED and job.lost_count == 1 and job.retries_left == 0
    assert [a.state for a in store.attempts(job_id)] == [AttemptState.LOST]


def test_a_job_lost_more_than_the_cap_fails_as_lost_too_often(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    for _ in range(3):
        claim(store, agent, lease_s=0.01)
        time.sleep(0.03)
        store.sweep(lost_cap=2, agent_timeout_s=60)
    job = store.get_job(job_id)
    assert job.state is JobState.FAILED and job.reason == "lost too often"
    assert job.lost_count == 3


def test_a_killed_job_whose_agent_is_lost_ends_cancelled(store: Store) -> None:
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    claim(store, agent, lease_s=0.05)
    store.kill([job_id])
    time.sleep(0.1)
    store.sweep(lost_cap=3, agent_timeout_s=60)
    assert store.get_job(job_id).state is JobState.CANCELLED


def test_silent_agents_are_marked_gone(store: Store) -> None:
    agent = store.register_agent(make_agent())
    time.sleep(0.05)
    assert store.sweep(lost_cap=3, agent_timeout_s=0.01).lost_agents == (agent,)
    assert store.list_agents() == []
    assert [a.state for a in store.list_agents(include_gone=True)] == ["gone"]


def test_a_running_job_cannot_be_removed_but_a_finished_one_can(store: Store) -> None:
    running, done = store.submit(make_submission(count=2))
    agent = store.register_agent(make_agent())
    _c1, c2 = claim(store, agent)
    store.finish(agent, [ok(c2.attempt_id)])
    with pytest.raises(Conflict, match=str(running)):
        store.remove([running])
    assert store.remove([done]) == [done]
    with pytest.raises(NotFound):
        store.get_job(done)


def test_retry_requeues_a_failed_job_with_its_retries_restored(store: Store) -> None:
    (job_id,) = store.submit(make_submission(retries=Retries(count=2, backoff_s=0)))
    agent = store.register_agent(make_agent())
    for _ in range(3):
        (c,) = claim(store, agent)
        store.finish(agent, [failed(c.attempt_id)])
    assert store.get_job(job_id).state is JobState.FAILED
    assert store.retry([job_id]) == [job_id]
    job = store.get_job(job_id)
    assert job.state is JobState.QUEUED and job.retries_left == 2
    assert store.retry([job_id]) == []


def test_only_one_owner_holds_a_lock_until_it_expires(store: Store) -> None:
    assert store.try_lock("sweeper", "a", ttl_s=0.1)
    assert not store.try_lock("sweeper", "b", ttl_s=0.1)
    assert store.try_lock("sweeper", "a", ttl_s=0.1)
    time.sleep(0.15)
    assert store.try_lock("sweeper", "b", ttl_s=0.1)
    assert not store.try_lock("sweeper", "a", ttl_s=0.1)


def test_listing_filters_by_state_and_tag_and_pages(store: Store) -> None:
    tagged = store.submit(make_submission(count=3, tags=("x",)))
    other = store.submit(make_submission(count=2))
    store.kill([other[0]])
    assert [j.id for j in store.list_jobs(JobFilter(tags=frozenset({"x"})))] == tagged
    assert [j.id for j in store.list_jobs(JobFilter(states=frozenset({JobState.CANCELLED})))] == [
        other[0]
    ]
    page = store.list_jobs(JobFilter(after_id=tagged[0], limit=2))
    assert [j.id for j in page] == tagged[1:3]
    assert store.list_jobs(JobFilter(tags=frozenset({"x"})))[0].tags == ("x",)


def test_counting_states_of_given_jobs(store: Store) -> None:
    ids = store.submit(make_submission(count=4))
    store.submit(make_submission(count=3))
    store.kill(ids[:1])
    counts = store.count_states(ids)
    assert counts[JobState.QUEUED] == 3 and counts[JobState.CANCELLED] == 1
    assert sum(store.count_states().values()) == 7


def test_unknown_jobs_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="job 99"):
        store.get_job(99)
    with pytest.raises(NotFound):
        store.job_spec(99)
    assert store.output_ref(99) is None


def _token(token_id: str, role: Role = Role.USER, **kw: object) -> TokenRecord:
    return TokenRecord(id=token_id, role=role, name="ann", created_at=time.time(), **kw)  # type: ignore[arg-type]


def test_a_token_is_stored_with_its_hash_only_and_can_be_revoked(store: Store) -> None:
    store.create_token(_token("t1"), "ab" * 32)
    got = store.get_token("t1")
    assert got is not None and got[1] == "ab" * 32 and got[0].role is Role.USER
    assert store.revoke_token("t1") and not store.revoke_token("t1")
    record = store.get_token("t1")
    assert record is not None and record[0].revoked and not record[0].usable(time.time())
    assert store.get_token("nope") is None
    assert [t.id for t in store.list_tokens()] == ["t1"]


def test_a_bootstrap_token_can_be_spent_exactly_once(store_factory: Callable[[], Store]) -> None:
    store = store_factory()
    store.create_token(_token("b1", Role.BOOTSTRAP, pool="cloud"), "cd" * 32)
    results: list[bool] = []

    def spend() -> None:
        results.append(store_factory().use_bootstrap("b1"))

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


def test_an_expired_bootstrap_token_cannot_be_spent(store: Store) -> None:
    store.create_token(_token("b2", Role.BOOTSTRAP, expires_at=time.time() - 1), "ef" * 32)
    assert not store.use_bootstrap("b2")


def test_creating_a_token_whose_id_exists_is_a_conflict(store: Store) -> None:
    store.create_token(_token("dup"), "ab" * 32)
    with pytest.raises(Conflict):
        store.create_token(_token("dup"), "cd" * 32)
    got = store.get_token("dup")
    assert got is not None and got[1] == "ab" * 32


# --- live log tails ---------------------------------------------------------------------------
def _running(store: Store) -> tuple[int, int, int]:
    """A running job: (job id, agent id, attempt id)."""
    (job_id,) = store.submit(make_submission())
    agent = store.register_agent(make_agent())
    (c,) = claim(store, agent)
    return job_id, agent, c.attempt_id


def test_pushed_log_tails_are_read_back_from_any_offset(store: Store) -> None:
    job_id, agent, attempt = _running(store)
    assert store.read_log(job_id, "stdout") is None
    store.push_logs(
        agent, [LogTail(attempt, "stdout", 0, b"hello "), LogTail(attempt, "stderr", 0, b"oops")]
    )
    store.push_logs(agent, [LogTail(attempt, "stdout", 6, b"world\n")])
    assert store.read_log(job_id, "stdout") == LogTail(attempt, "stdout", 0, b"hello world\n")
    assert store.read_log(job_id, "stdout", 6) == LogTail(attempt, "stdout", 6, b"world\n")
    assert store.read_log(job_id, "stdout", 99) == LogTail(attempt, "stdout", 12, b"")
    assert store.read_log(job_id, "stderr") == LogTail(attempt, "stderr", 0, b"oops")


def test_a_resent_log_tail_overwrites_and_a_gap_starts_afresh(store: Store) -> None:
    job_id, agent, attempt = _running(store)
    store.push_logs(agent, [LogTail(attempt, "stdout", 0, b"abcdef")])
    store.push_logs(agent, [LogTail(attempt, "stdout", 3, b"DEFG")])  # a push sent twice
    assert store.read_log(job_id, "stdout") == LogTail(attempt, "stdout", 0, b"abcDEFG")
    store.push_logs(agent, [LogTail(attempt, "stdout", 100, b"later")])  # the job outran pushes
    assert store.read_log(job_id, "stdout", 0) == LogTail(attempt, "stdout", 100, b"later")


def test_only_the_newest_mebibyte_of_a_log_is_kept(store: Store) -> None:
    job_id, agent, attempt = _running(store)
    chunk = bytes(range(256)) * 1024  # 256 KiB
    for i in range(5):
        store.push_logs(agent, [LogTail(attempt, "stdout", i * len(chunk), chunk)])
    tail = store.read_log(job_id, "stdout")
    assert tail is not None
    assert len(tail.data) == LOG_TAIL_MAX_BYTES
    assert tail.offset == 5 * len(chunk) - LOG_TAIL_MAX_BYTES
    assert tail.data == (chunk * 5)[-LOG_TAIL_MAX_BYTES:]


def test_log_tails_of_another_agents_or_ended_attempts_are_ignored(store: Store) -> None:
    job_id, agent, attempt = _running(store)
    intruder = store.register_agent(make_agent())
    store.push_logs(intruder, [LogTail(attempt, "stdout", 0, b"forged")])
    store.push_logs(agent, [LogTail(attempt, "stdin", 0, b"no such stream")])
    assert store.read_log(job_id, "stdout") is None
    store.finish(agent, [ok(attempt)])
    store.push_logs(agent, [LogTail(attempt, "stdout", 0, b"too late")])
    assert store.read_log(job_id, "stdout") is None


def test_a_finished_attempt_drops_its_log_tail_and_a_rerun_starts_over(store: Store) -> None:
    job_id, agent, attempt = _running(store)
    store.push_logs(agent, [LogTail(attempt, "stdout", 0, b"first run")])
    store.finish(agent, [failed(attempt)])
    assert store.read_log(job_id, "stdout") is None
    store.retry([job_id])
    (again,) = claim(store, agent)
    assert store.read_log(job_id, "stdout") is None
    store.push_logs(agent, [LogTail(again.attempt_id, "stdout", 0, b"second")])
    assert store.read_log(job_id, "stdout") == LogTail(again.attempt_id, "stdout", 0, b"second")


def test_a_removed_job_has_no_log(store: Store) -> None:
    job_id, agent, attempt = _running(store)
    store.push_logs(agent, [LogTail(attempt, "stdout", 0, b"x")])
    store.kill([job_id])
    store.finish(agent, [Outcome(attempt, AttemptState.CANCELLED, reason="killed")])
    store.remove([job_id])
    assert store.read_log(job_id, "stdout") is None


# --- the resource manager -------------------------------------------------------------------
def test_an_instance_is_recorded_then_moves_through_its_states_with_times(store: Store) -> None:
    inst = store.create_instance("cloud", "simulated", 0.1, "backlog of 5")
    assert (inst.state, inst.pool, inst.launched_at) == (InstanceState.REQUESTED, "cloud", None)
    assert store.set_instance(inst.id, InstanceState.BOOTING, "launched", provider_id="sim-1")
    (booting,) = store.list_instances("cloud")
    assert booting.provider_id == "sim-1" and booting.launched_at is not None
    # a conditional move: only from the expected states
    assert not store.set_instance(
        inst.id, InstanceState.DRAINING, "idle", expect=(InstanceState.RUNNING,)
    )
    assert store.set_instance(inst.id, InstanceState.TERMINATED, "idle too long")
    assert store.list_instances("cloud") == []
    (ended,) = store.list_instances("cloud", include_ended=True)
    assert ended.state is InstanceState.TERMINATED and ended.ended_at is not None
    assert ended.provider_id == "sim-1"
    assert not store.set_instance(inst.id, InstanceState.RUNNING, "ended states are final")
    kinds = [e.kind for e in store.events()]
    assert kinds[-3:] == ["instance_requested", "instance_booting", "instance_terminated"]


def test_an_agent_registering_for_an_instance_makes_it_running(store: Store) -> None:
    inst = store.create_instance("cloud", "simulated", 0.1, "demand")
    store.set_instance(inst.id, InstanceState.BOOTING, "launched", provider_id="x")
    agent = store.register_agent(make_agent(instance_id=inst.id, pool="cloud"))
    (running,) = store.list_instances()
    assert running.state is InstanceState.RUNNING and running.agent_id == agent
    (listed,) = store.list_agents()
    assert listed.instance_id == inst.id and listed.pool == "cloud"


def test_demand_counts_claimable_queued_jobs_per_class_and_priority(store: Store) -> None:
    store.submit(make_submission(count=3, cpus=1))
    store.submit(make_submission(count=2, cpus=2, priority=5, requires=("ssd",)))
    store.submit(make_submission(gpus=1))
    agent = store.register_agent(make_agent())
    claim(store, agent, limit=1, cpus=1)  # one 1-cpu job is running now
    demand = {(d.cpus, d.gpus, d.labels, d.priority): d.count for d in store.queued_demand()}
    assert demand == {
        (1.0, 0, frozenset(), 0): 2,
        (2.0, 0, frozenset({"ssd"}), 5): 2,
        (1.0, 1, frozenset(), 0): 1,
    }
    (load,) = store.agent_loads()
    assert (load.agent_id, load.cpus, load.running) == (agent, 1.0, 1)


def test_an_agent_is_idle_since_a_heartbeat_without_jobs(store: Store) -> None:
    agent = store.register_agent(make_agent())
    (fresh,) = store.list_agents()
    assert fresh.idle_since is not None  # idle from its start
    store.submit(make_submission())
    (c,) = claim(store, agent)
    store.heartbeat(agent, [c.attempt_id], 30)
    assert store.list_agents()[0].idle_since is None
    store.finish(agent, [ok(c.attempt_id)])
    before = time.time()
    store.heartbeat(agent, [], 30)
    idle_since = store.list_agents()[0].idle_since
    assert idle_since is not None and idle_since >= before - 1


def test_abandoning_an_agent_requeues_its_running_jobs_at_once(store: Store) -> None:
    jobs = store.submit(make_submission(count=2))
    agent = store.register_agent(make_agent())
    other = store.register_agent(make_agent())
    claims = claim(store, agent, limit=2, cpus=2, lease_s=3600)
    result = store.abandon_agent(agent, "its instance was killed", lost_cap=3)
    assert sorted(result.requeued_jobs) == sorted(jobs)
    assert sorted(result.lost_attempts) == sorted(c.attempt_id for c in claims)
    assert {store.get_job(j).state for j in jobs} == {JobState.QUEUED}
    assert [a.id for a in store.list_agents()] == [other]
    assert store.heartbeat(agent, [c.attempt_id for c in claims], 30).drain


def test_manager_events_and_kept_values_are_stored(store: Store) -> None:
    store.record_event("manager_launch", "launching 2 of pool cloud: 10 jobs queued")
    assert store.events()[-1].detail == "launching 2 of pool cloud: 10 jobs queued"
    assert store.get_meta("manager.idle_votes") is None
    store.set_meta("manager.idle_votes", '{"cloud": 1}')
    store.set_meta("manager.idle_votes", '{"cloud": 2}')
    assert store.get_meta("manager.idle_votes") == '{"cloud": 2}'


# --- event outlets: the outbox ----------------------------------------------------------------
def _taken(store: Store, outlet: str) -> list[tuple[int | None, str]]:
    return [(d.event.job_id, d.event.kind) for d in store.take_deliveries(outlet)]


def test_no_event_is_queued_for_an_outlet_before_it_is_enabled(store: Store) -> None:
    store.submit(make_submission())
    assert store.enable_outlet("amqp") is True
    assert store.take_deliveries("amqp") == []
    (job,) = store.submit(make_submission())
    assert _taken(store, "amqp") == [(job, "submitted")]
    assert store.take_deliveries("webhook:other") == []


def test_an_outlet_takes_each_job_s_events_in_order_with_their_fields(store: Store) -> None:
    store.enable_outlet("amqp")
    jobs = store.submit(make_submission(count=2))
    agent = store.register_agent(make_agent())
    claims = claim(store, agent, limit=2)
    store.finish(agent, [ok(c.attempt_id) for c in claims])
    taken = store.take_deliveries("amqp")
    ids = [d.event.id for d in taken]
    assert ids == sorted(ids) and taken == store.take_deliveries("amqp")  # taking keeps them
    assert [d.event for d in taken] == store.events(after_id=ids[0] - 1)
    for job in jobs:
        kinds = [d.event.kind for d in taken if d.event.job_id == job]
        assert kinds == ["submitted", "started", "succeeded"]
    succeeded = next(d.event for d in taken if d.event.kind == "succeeded")
    assert (succeeded.from_state, succeeded.to_state, succeeded.agent_id) == (
        "running",
        "succeeded",
        agent,
    )
    assert [d.event.kind for d in taken if d.event.job_id is None] == ["agent_up"]
    assert {(d.outlet, d.attempts, d.error) for d in taken} == {("amqp", 0, "")}


def test_delivered_events_leave_the_outbox_of_that_outlet_only(store: Store) -> None:
    store.enable_outlet("amqp")
    store.enable_outlet("webhook:billing")
    store.submit(make_submission(count=3))
    first = [d.event.id for d in store.take_deliveries("amqp", limit=2)]
    assert len(first) == 2
    store.mark_delivered("amqp", first)
    rest = [d.event.id for d in store.take_deliveries("amqp")]
    assert len(rest) == 1 and rest[0] > first[-1]
    assert len(store.take_deliveries("webhook:billing")) == 3
    store.mark_delivered("amqp", rest)
    store.mark_delivered("amqp", rest)  # again: nothing left to delete, no error
    assert store.take_deliveries("amqp") == []


def test_a_failed_delivery_holds_back_the_ones_after_it_until_its_next_try(store: Store) -> None:
    store.enable_outlet("hook")
    store.submit(make_submission(count=3))
    head, *_ = store.take_deliveries("hook")
    store.mark_failed("hook", head.event.id, 0.5, "HTTP 503 from https://example.org/hook")
    assert store.take_deliveries("hook") == []
    (status,) = store.list_outlets()
    assert status.pending == 3 and status.head is not None
    assert status.head.attempts == 1 and status.head.error.startswith("HTTP 503")
    assert status.head.next_try > time.time()
    time.sleep(0.6)
    again = store.take_deliveries("hook")
    assert [d.event.id for d in again][:1] == [head.event.id] and len(again) == 3
    assert again[0].attempts == 1 and again[1].attempts == 0


def test_disabling_an_outlet_drops_its_backlog_and_stops_queueing(store: Store) -> None:
    assert store.enable_outlet("amqp") is True
    assert store.enable_outlet("amqp") is False  # already enabled
    store.submit(make_submission(count=2))
    assert store.disable_outlet("amqp") == 2
    store.submit(make_submission())
    assert store.take_deliveries("amqp") == []
    (status,) = store.list_outlets()
    assert (status.name, status.enabled, status.pending, status.head) == ("amqp", False, 0, None)
    assert store.enable_outlet("amqp") is True
    (job,) = store.submit(make_submission())
    assert _taken(store, "amqp") == [(job, "submitted")]
    assert store.disable_outlet("never-enabled") == 0


def test_writers_racing_a_deliverer_lose_no_event_and_keep_each_job_s_order(
    store_factory: Callable[[], Store],
) -> None:
    deliverer = store_factory()
    deliverer.enable_outlet("amqp")
    stop = threading.Event()
    errors: list[BaseException] = []
    writers = [
        threading.Thread(target=_submit_and_run, args=(store_factory(), stop, errors))
        for _ in range(3)
    ]
    for t in writers:
        t.start()
    delivered: list[Event] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        _deliver(deliverer, delivered)
    stop.set()
    for t in writers:
        t.join()
    while _deliver(deliverer, delivered):
        pass
    assert errors == []
    ids = [e.id for e in delivered]
    assert sorted(ids) == [e.id for e in _all_events(deliverer)] and len(set(ids)) == len(ids)
    per_job: dict[int, list[int]] = {}
    for e in delivered:
        if e.job_id is not None:
            per_job.setdefault(e.job_id, []).append(e.id)
    assert len(per_job) >= 3 and [j for j, ids in per_job.items() if ids != sorted(ids)] == []
    assert [j for j, ids in per_job.items() if len(ids) not in (1, 3)] == []  # (1: still queued)


def _submit_and_run(writer: Store, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        agent = writer.register_agent(make_agent())
        while not stop.is_set():
            writer.submit(make_submission(count=3))
            claims = claim(writer, agent, limit=3, cpus=3)
            writer.finish(agent, [ok(c.attempt_id) for c in claims])
    except BaseException as exc:
        errors.append(exc)


def _deliver(store: Store, delivered: list[Event]) -> int:
    batch = store.take_deliveries("amqp", limit=50)
    delivered += [d.event for d in batch]
    store.mark_delivered("amqp", [d.event.id for d in batch])
    return len(batch)


def _all_events(store: Store) -> list[Event]:
    found: list[Event] = []
    after = 0
    while page := store.events(after_id=after):
        found += page
        after = page[-1].id
    return found
