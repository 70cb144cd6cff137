"""What the dashboard asks of the API, over real HTTP: the jobs page's listings (filters, sorts,
pages) and the charts' time series, recorded by the server's sampler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from clobi.api.sampler import Sampler
from clobi.errors import UsageError
from clobi.model.auth import Role
from clobi.model.instances import InstanceState
from clobi.model.records import JobFilter, Outcome
from clobi.model.states import AttemptState
from clobi.remote import store as remote_store
from clobi.session import init_session
from clobi.store.base import ClaimRequest, Store
from tests.conftest import capacity, make_agent, make_submission
from tests.integration.test_api_routes import Api, api, submit

__all__ = ["api"]

T0 = 1_900_000_200  # a fake clock's start, after any real sample the server's sampler takes


def _ids(answer: Any) -> list[int]:
    assert answer.status_code == 200, answer.text
    return [j["id"] for j in answer.json()]


# --- the jobs page ------------------------------------------------------------------------
def test_a_user_lists_own_jobs_by_text_sort_and_page(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    low = submit(api, alice, name="Render-low", priority=1, array={"count": 3})
    high = submit(api, alice, name="fetch", priority=7, array={"count": 2})
    submit(api, bob, name="render-bob", priority=9)
    http = api.http(alice)
    assert _ids(http.get("/api/v1/jobs", params={"text": "RENDER"})) == low
    by_priority = {"sort": "priority", "desc": "true", "limit": 2}
    first = http.get("/api/v1/jobs", params=by_priority).json()
    assert [j["id"] for j in first] == high[::-1]
    cursor = {"after_id": first[-1]["id"], "after_value": first[-1]["priority"]}
    assert _ids(http.get("/api/v1/jobs", params={**by_priority, **cursor})) == low[:0:-1]
    assert _ids(http.get("/api/v1/jobs", params={**by_priority, "offset": 4})) == low[:1]
    assert _ids(http.get("/api/v1/jobs", params={"owner": "bob"})) == []
    newest = http.get("/api/v1/jobs", params={"owner": "alice", "desc": "true"})
    assert _ids(newest) == (low + high)[::-1]


def test_an_admin_filters_by_owner_and_sorts_by_update(api: Api) -> None:
    alice, bob = api.token(Role.USER, "alice"), api.token(Role.USER, "bob")
    first = submit(api, alice, array={"count": 2})
    (second,) = submit(api, bob)
    api.http(alice).post("/api/v1/jobs/kill", json={"ids": first[:1]})  # updated last
    http = api.http(api.token(Role.ADMIN, "root"))
    assert _ids(http.get("/api/v1/jobs", params={"owner": "bob"})) == [second]
    newest = http.get("/api/v1/jobs", params={"sort": "updated", "desc": "true"})
    assert _ids(newest) == [first[0], second, first[1]]


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "name"},
        {"sort": "priority", "after_id": 3},
        {"sort": "priority", "after_id": 3, "after_value": "high"},
        {"sort": "updated", "after_id": 3, "after_value": "nan"},
        {"offset": 10_001},
        {"text": "a\x00b"},
        {"tag": "a\x00b"},
    ],
)
def test_a_listing_refuses_bad_sorts_cursors_and_offsets(api: Api, params: dict[str, Any]) -> None:
    answer = api.http(api.token(Role.USER)).get("/api/v1/jobs", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "UsageError"


def test_the_remote_client_pages_a_sorted_listing_with_the_cursor(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_store, "PAGE", 2)  # so that every listing takes several pages
    token = api.token(Role.USER, "alice")
    for priority in (3, 1, 3, 2):
        submit(api, token, priority=priority, array={"count": 2})
    store, _ = api.remote(token)
    local = api.store.list_jobs(JobFilter(limit=None))
    for sort in ("priority", "updated", "state", "id"):
        flt = JobFilter(sort=sort, descending=True, limit=None)
        expected = [j.id for j in sorted(local, key=flt.sort_key, reverse=True)]
        assert [j.id for j in store.list_jobs(flt)] == expected
        ids = tuple(expected[::2])
        chosen = JobFilter(sort=sort, descending=True, ids=ids, offset=1, limit=2)
        assert [j.id for j in store.list_jobs(chosen)] == list(ids[1:3])


# --- the charts -----------------------------------------------------------------------------
def test_the_series_route_answers_points_per_metric_from_the_chosen_archive(api: Api) -> None:
    for k in range(60):
        api.store.record_samples(T0 + 10 * k, {"queued.p5": k, "finished": 1})
    http = api.http(api.token(Role.USER))
    params: dict[str, Any] = {"metric": ["queued.p5", "finished", "nothing"]}
    answer = http.get("/api/v1/series", params={**params, "since": T0, "until": T0 + 599})
    assert answer.status_code == 200, answer.text
    points = answer.json()
    assert points["queued.p5"][:2] == [[T0, 0.0], [T0 + 10, 1.0]]
    assert len(points["finished"]) == 60 and points["nothing"] == []
    month = {**params, "since": T0 - 20 * 86_400, "until": T0 + 599}
    assert http.get("/api/v1/series", params=month).json()["finished"] == [
        [T0, 30.0],
        [T0 + 300, 30.0],
    ]
    minute = {"metric": "finished", "since": T0, "until": T0 + 599, "step": 60}
    assert http.get("/api/v1/series", params=minute).json()["finished"][0] == [T0, 6.0]
    every = {"metric": "queued.*", "since": T0, "until": T0 + 15}
    assert http.get("/api/v1/series", params=every).json() == {"queued.p5": [[T0, 0], [T0 + 10, 1]]}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"metric": "bad name"},
        {"metric": "a*b"},
        {"metric": ""},
        {"metric": "x", "step": 7},
        {"metric": "x", "since": 10, "until": 5},
        {"metric": "x", "since": "inf"},
    ],
)
def test_the_series_route_refuses_bad_requests(api: Api, params: dict[str, Any]) -> None:
    answer = api.http(api.token(Role.USER)).get("/api/v1/series", params=params)
    assert answer.status_code == 422, answer.text


def test_the_server_samples_from_its_start(api: Api) -> None:
    http = api.http(api.token(Role.USER))
    metrics = ["jobs.queued", "jobs.succeeded", "agents.live"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = http.get("/api/v1/series", params={"metric": metrics}).json()
        if all(found[m] for m in metrics):
            break
        time.sleep(0.1)
    assert {m: found[m][-1][1] for m in metrics} == dict.fromkeys(metrics, 0.0)


def test_a_remote_store_reads_series_but_does_not_record_them(api: Api) -> None:
    api.store.record_samples(T0, {"agents.live": 2})
    store, _ = api.remote(api.token(Role.USER))
    assert store.read_series(["agents.live"], T0, T0 + 5) == {"agents.live": [(T0, 2.0)]}
    assert store.read_series(["agents.*"], T0, T0 + 5) == {"agents.live": [(T0, 2.0)]}
    with pytest.raises(UsageError, match="server"):
        store.record_samples(T0, {"agents.live": 1})
    with pytest.raises(UsageError, match="server"):
        store.count_finished(None)


# --- the sampler ------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = init_session(tmp_path / "session").open_store()
    yield store
    store.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _last(store: Store, metric: str) -> float | None:
    points = store.read_series([metric], T0 - 60, T0 + 3600)[metric]
    return points[-1][1] if points else None


def test_the_sampler_records_levels_and_the_throughput_since_its_last_sample(
    store: Store,
) -> None:
    clock = Clock(T0 + 1)
    sampler = Sampler(store, clock=clock)
    store.submit(make_submission(count=5, priority=3))
    store.submit(make_submission(count=2, priority=8))
    agent = store.register_agent(make_agent())
    assert sampler.sample_once()
    assert _last(store, "throughput") is None  # no earlier sample to count from
    claims = store.claim(ClaimRequest(agent, capacity(cpus=3), 3, 60.0))
    done = [Outcome(c.attempt_id, AttemptState.SUCCEEDED, exit_code=0) for c in claims[:2]]
    store.finish(agent, done)
    clock.now += 10
    assert sampler.sample_once()
    values = {m: _last(store, m) for m in ("jobs.queued", "jobs.running", "jobs.succeeded")}
    assert values == {"jobs.queued": 4, "jobs.running": 1, "jobs.succeeded": 2}
    assert _last(store, "queued.p3") == 4 and _last(store, "queued.p8") == 0  # gone: 0 once
    assert _last(store, "agents.live") == 1
    assert _last(store, "finished") == 2 and _last(store, "throughput") == pytest.approx(0.2)


def test_a_pool_without_instances_drops_to_zero_once(store: Store) -> None:
    clock = Clock(T0 + 1)
    sampler = Sampler(store, clock=clock)
    instance = store.create_instance("cloud", "simulated", 0.1, "test")
    store.set_instance(instance.id, InstanceState.BOOTING, "launched", provider_id="i-1")
    sampler.sample_once()
    assert _last(store, "instances.cloud.booting") == 1
    store.set_instance(instance.id, InstanceState.TERMINATED, "gone")
    for _ in range(2):
        clock.now += 10
        sampler.sample_once()
    points = store.read_series(["instances.cloud.booting"], T0, T0 + 60)
    assert [v for _, v in points["instances.cloud.booting"]] == [1.0, 0.0]


def test_one_sampler_samples_while_another_holds_the_lock(store: Store) -> None:
    clock = Clock(T0 + 1)
    first, second = Sampler(store, clock=clock), Sampler(store, clock=clock)
    assert first.sample_once()
    assert not second.sample_once()
    assert store.read_series(["jobs.queued"], T0, T0 + 10)["jobs.queued"] == [(T0, 0.0)]
