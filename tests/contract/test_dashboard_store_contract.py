"""The Store contract for the dashboard, run against every engine: job listings filtered,
sorted and paged as its jobs page asks for them, and the time series behind its charts."""

from __future__ import annotations

import dataclasses
import math

import pytest

from clobi.errors import UsageError
from clobi.model.records import JobFilter, JobRecord
from clobi.model.states import JobState
from clobi.store.base import SERIES_ARCHIVES, Store
from tests.conftest import make_agent, make_submission
from tests.contract.test_store_contract import claim, failed, ok

DAY_S = 86_400
T0 = 1_800_000_000  # a fake clock's start, a multiple of every archive's step


# --- listing jobs -----------------------------------------------------------------------
def _submit(store: Store, owner: str = "ann", **spec: object) -> list[int]:
    return store.submit(dataclasses.replace(make_submission(**spec), owner=owner))


def _mixed(store: Store) -> list[JobRecord]:
    """Jobs of two owners in every state but timed_out, with equal and distinct priorities,
    names, tags and update times."""
    _submit(store, "ann", name="Render-A", priority=5, count=3, tags=("x",))
    _submit(store, "bob", name="render_b", priority=1, count=2)
    _submit(store, "ann", name="x_y", priority=9, tags=("x", "y"))
    _submit(store, "bob", name="xaby", priority=5, count=2)
    _submit(store, "ann", name="50%", priority=0)
    agent = store.register_agent(make_agent())
    c1, c2, _ = claim(store, agent, limit=3)  # the priority 9, then two of priority 5
    store.finish(agent, [ok(c1.attempt_id), failed(c2.attempt_id, user_error=True)])
    store.kill([store.list_jobs(JobFilter(states=frozenset({JobState.QUEUED})))[-1].id])
    return store.list_jobs(JobFilter(limit=None))


def _ids(store: Store, **flt: object) -> list[int]:
    return [j.id for j in store.list_jobs(JobFilter(limit=None, **flt))]  # type: ignore[arg-type]


def _walk(store: Store, page: int, **flt: object) -> list[int]:
    """Every job of a listing, `page` at a time, each page starting after the last one's
    last job (the keyset cursor a jobs page sends)."""
    found: list[JobRecord] = []
    cursor: dict[str, object] = {}
    while batch := store.list_jobs(JobFilter(limit=page, **flt, **cursor)):  # type: ignore[arg-type]
        found += batch
        last = batch[-1]
        value = JobFilter(**flt).sort_key(last)[0]  # type: ignore[arg-type]
        cursor = {"after_id": last.id, "after_value": value}
        assert len(found) <= 100, "the cursor does not move on"
    return [j.id for j in found]


def test_a_listing_filters_by_text_ignoring_case_with_wildcards_taken_literally(
    store: Store,
) -> None:
    jobs = _mixed(store)
    named = {n: [j.id for j in jobs if j.name == n] for n in {j.name for j in jobs}}
    assert _ids(store, text="RENDER") == named["Render-A"] + named["render_b"]
    assert _ids(store, text="_") == named["render_b"] + named["x_y"]
    assert _ids(store, text="%") == named["50%"]
    assert _ids(store, text="\\") == []
    assert _ids(store, text="x_y", states=frozenset({JobState.SUCCEEDED})) == named["x_y"]


def test_a_listing_filters_by_owner_state_and_tag_together(store: Store) -> None:
    jobs = _mixed(store)
    anns = [j.id for j in jobs if j.owner == "ann"]
    assert _ids(store, owner="ann") == anns
    queued_x = [j.id for j in jobs if "x" in j.tags and j.state is JobState.QUEUED]
    assert _ids(store, owner="ann", tags=frozenset({"x"}), states=frozenset({JobState.QUEUED})) == (
        queued_x
    )
    assert _ids(store, owner="nobody") == []


@pytest.mark.parametrize("sort", ["id", "created", "priority", "state", "updated"])
@pytest.mark.parametrize("descending", [False, True])
def test_a_listing_sorts_by_each_key_ties_by_id_and_pages_with_a_cursor(
    store: Store, sort: str, descending: bool
) -> None:
    jobs = _mixed(store)
    flt = JobFilter(sort=sort, descending=descending)
    expected = [j.id for j in sorted(jobs, key=flt.sort_key, reverse=descending)]
    assert _ids(store, sort=sort, descending=descending) == expected
    assert _walk(store, 2, sort=sort, descending=descending) == expected
    assert _walk(store, 3, sort=sort, descending=descending, owner="ann") == [
        i for i in expected if i in {j.id for j in jobs if j.owner == "ann"}
    ]


def test_a_listing_pages_by_offset_too(store: Store) -> None:
    jobs = _mixed(store)
    by_priority = [j.id for j in sorted(jobs, key=lambda j: (-j.priority, -j.id))]
    flt = {"sort": "priority", "descending": True}
    assert _ids(store, **flt, offset=3) == by_priority[3:]
    page = store.list_jobs(JobFilter(limit=2, offset=4, **flt))  # type: ignore[arg-type]
    assert [j.id for j in page] == by_priority[4:6]
    assert _ids(store, offset=len(jobs)) == []


def test_a_listing_in_the_id_order_pages_down_from_after_id(store: Store) -> None:
    ids = _submit(store, count=5)
    assert _ids(store, descending=True, after_id=ids[3]) == ids[2::-1]
    assert _ids(store, after_id=ids[3]) == ids[4:]
    assert _ids(store, descending=True, after_id=0) == ids[::-1]


def test_a_listing_refuses_unknown_sorts_and_cursors_without_a_value() -> None:
    with pytest.raises(UsageError, match="sort"):
        JobFilter(sort="name")
    with pytest.raises(UsageError, match="after_value"):
        JobFilter(sort="priority", after_id=3)
    with pytest.raises(UsageError, match="offset"):
        JobFilter(offset=-1)


# --- time series --------------------------------------------------------------------------
def _points(store: Store, metric: str, since: float, until: float, **kw: object) -> list[float]:
    return [v for _, v in store.read_series([metric], since, until, **kw)[metric]]  # type: ignore[arg-type]


def test_samples_fold_into_the_coarse_archive_by_their_kind(store: Store) -> None:
    for k in range(30):  # one 5-minute bucket of 10-second samples
        store.record_samples(T0 + 10 * k, {"jobs.queued": k, "throughput": 0.5, "finished": 5})
    end = T0 + 299
    assert _points(store, "jobs.queued", T0, end) == list(range(30))
    assert store.read_series(["finished"], T0, T0 + 15)["finished"] == [(T0, 5), (T0 + 10, 5)]
    long = store.read_series(["jobs.queued", "throughput", "finished"], end - 2 * DAY_S, end)
    assert long == {
        "jobs.queued": [(T0, 14.5)],  # a level: averaged
        "throughput": [(T0, 0.5)],  # a rate: averaged
        "finished": [(T0, 150)],  # a count: summed
    }


def test_a_count_sampled_twice_in_one_bucket_adds_and_a_level_is_replaced(store: Store) -> None:
    store.record_samples(T0 + 1, {"finished": 2, "agents.live": 3})
    store.record_samples(T0 + 9, {"finished": 4, "agents.live": 5})
    got = store.read_series(["finished", "agents.live", "unknown"], T0, T0 + 9)
    assert got == {"finished": [(T0, 6)], "agents.live": [(T0, 5)], "unknown": []}


def test_reads_pick_the_archive_by_span_or_merge_into_a_wider_step(store: Store) -> None:
    for k in range(60):  # ten minutes, a level that is k
        store.record_samples(T0 + 10 * k, {"queued.p5": k, "finished": 1})
    end = T0 + 599
    assert len(_points(store, "queued.p5", T0, end)) == 60  # ten minutes: the 10 s archive
    assert len(_points(store, "queued.p5", T0, T0 + DAY_S)) == 60  # a day: still 10 s
    assert _points(store, "queued.p5", T0, T0 + DAY_S + 1) == [14.5, 44.5]  # longer: 5 min
    assert _points(store, "queued.p5", end - 40 * DAY_S, end) == [14.5, 44.5]  # > 30 days too
    assert _points(store, "queued.p5", T0, end, step_s=60) == [2.5 + 6 * k for k in range(10)]
    assert _points(store, "finished", T0, end, step_s=120) == [12.0] * 5
    assert _points(store, "finished", T0, end, step_s=600) == [60.0]  # from the 5 min archive
    for bad in (7, 0, -10):
        with pytest.raises(UsageError, match="step"):
            store.read_series(["finished"], T0, end, step_s=bad)


def test_a_name_ending_in_a_star_reads_every_metric_so_named_with_points(store: Store) -> None:
    store.record_samples(T0, {"queued.p1": 4, "queued.p10": 2, "jobs.queued": 6})
    store.record_samples(T0 + 400, {"queued.p7": 1})
    got = store.read_series(["queued.p*", "agents.live"], T0, T0 + 60)
    assert got == {"agents.live": [], "queued.p1": [(T0, 4)], "queued.p10": [(T0, 2)]}
    assert set(store.read_series(["*"], T0, T0 + 3600)) == {
        "jobs.queued", "queued.p1", "queued.p10", "queued.p7"
    }  # fmt: skip
    assert store.read_series(["nothing.*"], T0, T0 + 60) == {}


def test_storage_stays_bounded_over_forty_days_of_samples(store: Store) -> None:
    fine, coarse = SERIES_ARCHIVES
    every_s, last = 7_200, 0.0
    for k in range(40 * DAY_S // every_s):
        last = T0 + k * every_s + 3
        store.record_samples(last, {"jobs.running": k, "instances.cloud.running": 1})
    for metric in ("jobs.running", "instances.cloud.running"):
        kept_fine = store.read_series([metric], last - fine.keep_s, last, step_s=fine.step_s)
        kept_all = store.read_series([metric], T0 - DAY_S, last, step_s=coarse.step_s)
        last_day = [T0 + k * every_s for k in range(467, 480)]
        assert [t for t, _ in kept_fine[metric]] == last_day
        # the 5-minute archive keeps 30 days: the samples since then, not the first 10 days
        oldest = min(t for t, _ in kept_all[metric])
        assert last - coarse.keep_s - coarse.step_s < oldest <= last - coarse.keep_s + every_s
        assert len(kept_all[metric]) == math.ceil(coarse.keep_s / every_s) + 1


def test_counting_finished_jobs_since_an_event(store: Store) -> None:
    assert store.count_finished(None) == (0, 0)
    ids = store.submit(make_submission(count=4))
    agent = store.register_agent(make_agent())
    c1, c2 = claim(store, agent, limit=2)
    _, start = store.count_finished(None)
    store.finish(agent, [ok(c1.attempt_id), failed(c2.attempt_id, user_error=True)])
    store.kill(ids[2:3])
    store.retry(ids[1:2])  # back to queued: not finished
    count, newest = store.count_finished(start)
    assert count == 3 and newest > start
    assert store.count_finished(newest) == (0, newest)
    assert store.count_finished(0)[0] == 3
