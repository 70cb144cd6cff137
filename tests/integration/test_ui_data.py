"""What the dashboard's pages read: the jobs listing (filters, sort, keyset pages), a job with
its attempts and logs, the output download, the overview; over real HTTP with a session."""

from __future__ import annotations

import base64
import io
import tarfile

from clobi.model.auth import Role
from tests.integration.test_api_routes import Api, api, claim_body, join, submit
from tests.integration.test_ui_auth import log_in

__all__ = ["api"]


def test_the_jobs_listing_filters_sorts_and_pages_with_a_cursor(api: Api) -> None:
    alice = api.token(Role.USER, "alice")
    low = submit(api, alice, name="render frame", priority=1, array={"count": 3})
    high = submit(api, alice, name="Render poster", priority=5, tags=["art"])
    other = submit(api, alice, name="encode", priority=3)
    browser = log_in(api, alice)

    def ids(**params: object) -> list[int]:
        return [j["id"] for j in browser.http.get("/ui/api/jobs", params=params).json()["jobs"]]

    assert ids() == sorted(low + high + other, reverse=True)  # newest first by default
    assert ids(desc="false") == sorted(low + high + other)
    assert ids(text="RENDER") == sorted(low + high, reverse=True)
    assert ids(tag="art") == high
    assert ids(text="100%") == []  # wildcards match themselves
    by_priority = ids(sort="priority")
    assert by_priority[0] == high[0] and by_priority[1] == other[0]

    seen: list[int] = []
    params: dict[str, object] = {"sort": "priority", "limit": 2}
    while True:
        page = browser.http.get("/ui/api/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        if page["next"] is None:
            break
        params = {"sort": "priority", "limit": 2, **page["next"]}
    assert seen == by_priority
    assert browser.http.get("/ui/api/jobs", params={"sort": "colour"}).status_code == 422


def test_a_job_shows_its_spec_attempts_live_log_and_output(api: Api) -> None:
    alice = api.token(Role.USER, "alice")
    (job_id,) = submit(api, alice, name="<b>x</b>")
    agent, agent_token = join(api)
    agent_http = api.http(agent_token)
    claims = agent_http.post(f"/api/v1/agents/{agent}/claim", json=claim_body()).json()
    attempt = claims["claims"][0]["attempt_id"]
    line = base64.b64encode(b"<script>alert(1)</script>\n").decode()
    tails = {"tails": [{"attempt_id": attempt, "stream": "stdout", "offset": 0, "data": line}]}
    agent_http.post(f"/api/v1/agents/{agent}/logs", json=tails)
    browser = log_in(api, alice)

    view = browser.http.get(f"/ui/api/jobs/{job_id}").json()
    assert view["job"]["name"] == "<b>x</b>" and view["job"]["state"] == "running"
    assert view["spec"]["command"] == ["true"]
    assert [a["id"] for a in view["attempts"]] == [attempt] and view["output"] is None
    tail = browser.http.get(f"/ui/api/jobs/{job_id}/log", params={"offset": 0}).json()
    assert base64.b64decode(tail["data"]) == b"<script>alert(1)</script>\n"

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("stdout", b"all done\n"), ("result.txt", b"42\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = base64.b64encode(archive.getvalue()).decode()
    outcome = {
        "attempt_id": attempt,
        "state": "succeeded",
        "exit_code": 0,
        "output_inline": body,
        "output_size": len(archive.getvalue()),
    }
    finished = agent_http.post(f"/api/v1/agents/{agent}/finish", json={"outcomes": [outcome]})
    assert finished.json()["refused"] == []

    final = browser.http.get(f"/ui/api/jobs/{job_id}/final-log").json()
    assert base64.b64decode(final["data"]) == b"all done\n" and not final["truncated"]
    download = browser.http.get(f"/ui/api/jobs/{job_id}/output")
    assert download.headers["content-disposition"] == (
        f'attachment; filename="job-{job_id}-output.tar"'
    )
    with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
        member = tar.extractfile("result.txt")
        assert member is not None and member.read() == b"42\n"


def test_the_overview_counts_jobs_and_groups_agents_by_pool(api: Api) -> None:
    alice = api.token(Role.USER, "alice")
    submit(api, alice, array={"count": 3})
    join(api, pool="p1", name="a")
    join(api, pool="p1", name="b")
    join(api, pool="p2", name="c")
    browser = log_in(api, api.token(Role.ADMIN, "root"))
    overview = browser.http.get("/ui/api/overview").json()
    assert overview["counts"]["queued"] == 3
    assert [(p["pool"], p["agents"]) for p in overview["pools"]] == [("p1", 2), ("p2", 1)]
    kinds = [e["kind"] for e in overview["events"]]
    assert kinds.count("submitted") == 3 and kinds.count("agent_up") == 3
    assert browser.http.get("/ui/api/pools").json()["pools"] == []  # no session directory


def test_the_charts_show_queued_jobs_per_priority_and_throughput(api: Api) -> None:
    alice = api.token(Role.USER, "alice")
    for priority in (1, 5, 3, 5, -2):
        submit(api, alice, priority=priority)
    browser = log_in(api, alice)
    charts = browser.http.get("/ui/api/series", params={"window_s": 600}).json()
    assert list(charts["queue"]) == ["priority 5", "priority 3", "priority 1", "priority -2"]
    assert list(charts["throughput"]) == ["jobs"]
    assert charts["until"] - charts["since"] == 600
    for points in (*charts["queue"].values(), *charts["throughput"].values()):
        assert all(len(p) == 2 and charts["since"] - 10 <= p[0] <= charts["until"] for p in points)
