"""The web hook outlet against a real HTTP receiver on 127.0.0.1 (http.server in a thread):
signatures, retries with backoff, order, filters, and `clobi outlets run` as a user runs it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from clobi.outlets.base import Backoff
from clobi.outlets.config import WebhookConfig
from clobi.outlets.runner import OutletRunner
from clobi.outlets.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookOutlet,
    signature,
    verify,
)
from clobi.store.base import Store
from clobi.store.sqlite import SqliteStore
from tests.acceptance.harness import wait_for
from tests.conftest import make_submission

SECRET = b"s3cret-for-the-billing-hook-0123456789"
FAST = Backoff(0.05, 0.2)


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A web hook receiver that answers 503 to its first `fail_first` requests."""

    url: str
    fail_first: int = 0
    got: list[Received] = field(default_factory=list)

    def accepted(self) -> list[dict[str, Any]]:
        return [r.event for r in list(self.got) if r.status == 200]


@contextlib.contextmanager
def receiver(fail_first: int = 0) -> Iterator[Receiver]:
    state = Receiver(url="", fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            failing = len(state.got) < state.fail_first
            status = 503 if failing or not verify(SECRET, self.headers, body) else 200
            state.got.append(Received(dict(self.headers), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/clobi?token=in-the-query"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def hook(url: str, **overrides: Any) -> WebhookOutlet:
    values: dict[str, Any] = {"name": "billing", "url": url, "secret": SECRET, "backoff": FAST}
    return WebhookOutlet(WebhookConfig(**{**values, **overrides}))


@contextlib.contextmanager
def running(store: Store, *outlets: WebhookOutlet) -> Iterator[OutletRunner]:
    runner = OutletRunner(store, outlets, poll_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = SqliteStore(tmp_path / "clobi.db")
    yield opened
    opened.close()


def test_every_event_arrives_signed_in_order(store: Store) -> None:
    with receiver() as rx, running(store, hook(rx.url)):
        wait_for(store.list_outlets, 10, "the runner to enable its outlet")
        jobs = store.submit(make_submission(count=20))
        wait_for(lambda: len(rx.accepted()) == 20, 10, "20 events")
    assert [e["job_id"] for e in rx.accepted()] == jobs
    assert {e["type"] for e in rx.accepted()} == {"job.submitted"}
    first = rx.got[0]
    assert first.headers[EVENT_ID_HEADER] == str(first.event["id"])
    assert first.headers[SIGNATURE_HEADER] == signature(
        SECRET, first.headers[TIMESTAMP_HEADER], first.body
    )
    assert store.take_deliveries("billing") == []


def test_a_failing_receiver_gets_retries_and_then_every_event_in_order(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "clobi.outlets")
    with receiver(fail_first=4) as rx, running(store, hook(rx.url)):
        wait_for(store.list_outlets, 10, "the runner to enable its outlet")
        jobs = store.submit(make_submission(count=5))
        wait_for(lambda: len(rx.accepted()) == 5, 20, "5 events after the failures")
    tries = [r.event["job_id"] for r in rx.got]
    assert tries[:5] == [jobs[0]] * 5  # the first event, until it went through
    assert [e["job_id"] for e in rx.accepted()] == jobs
    stamps = [float(r.headers[TIMESTAMP_HEADER]) for r in rx.got]
    assert stamps == sorted(stamps)
    log = caplog.text
    assert "try 4 failed" in log and "HTTP 503" in log and "delivering again" in log
    assert SECRET.decode() not in log and "in-the-query" not in log


def test_failures_back_off_exponentially_up_to_the_cap(store: Store) -> None:
    with receiver(fail_first=1000) as rx:
        outlet = hook(rx.url, backoff=Backoff(0.1, 0.4))
        store.enable_outlet("billing")
        store.submit(make_submission())
        runner = OutletRunner(store, [outlet])
        delays = []
        for _ in range(5):
            wait_for(lambda: bool(store.take_deliveries("billing")), 5, "the next try")
            runner.deliver_once(outlet)
            (status,) = store.list_outlets()
            assert status.head is not None
            delays.append(status.head.next_try - time.time())
        outlet.close()
    ceilings = [0.1, 0.2, 0.4, 0.4, 0.4]
    assert all(c / 2 - 0.05 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert status.head.attempts == 5 and status.head.error.endswith("HTTP 503 Service Unavailable")


def test_a_wrong_secret_a_changed_body_or_an_old_timestamp_fail_verification() -> None:
    body = b'{"id":1}'
    now = time.time()
    stamp = str(int(now))
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(SECRET, stamp, body)}
    assert verify(SECRET, headers, body, now=now)
    assert not verify(b"another-secret-of-some-length", headers, body, now=now)
    assert not verify(SECRET, headers, b'{"id":2}', now=now)
    assert not verify(SECRET, headers, body, now=now + 301)  # a replay, later
    old = str(int(now) - 3600)
    replay = {TIMESTAMP_HEADER: old, SIGNATURE_HEADER: signature(SECRET, old, body)}
    assert not verify(SECRET, replay, body, now=now)
    assert not verify(SECRET, {}, body, now=now)


def test_a_receiver_with_the_wrong_secret_refuses_and_the_event_waits(store: Store) -> None:
    with receiver() as rx:
        outlet = hook(rx.url, secret=b"not-the-receiver-s-secret-0000")
        store.enable_outlet("billing")
        store.submit(make_submission())
        OutletRunner(store, [outlet]).deliver_once(outlet)
        outlet.close()
    assert [r.status for r in rx.got] == [503]
    (waiting,) = store.list_outlets()
    assert waiting.pending == 1 and waiting.head is not None and waiting.head.attempts == 1


def test_a_hook_gets_only_the_events_its_patterns_match(store: Store) -> None:
    with receiver() as rx, running(store, hook(rx.url, patterns=("job.succeeded", "agent.*"))):
        wait_for(store.list_outlets, 10, "the runner to enable its outlet")
        store.submit(make_submission(count=3))
        store.record_event("agent_lost", "no heartbeat")
        wait_for(lambda: len(rx.accepted()) == 1, 10, "the agent event")
        wait_for(lambda: store.take_deliveries("billing") == [], 10, "the outbox to empty")
    assert [e["type"] for e in rx.accepted()] == ["agent.lost"]


def test_clobi_outlets_run_delivers_from_the_session_until_sigterm(tmp_path: Path) -> None:
    from clobi.session import init_session

    session = init_session(tmp_path / "s")
    with receiver() as rx:
        config = session.root / "clobi.toml"
        config.write_text(
            config.read_text()
            + f'\n[[events.webhooks]]\nname = "billing"\nurl = "{rx.url}"\n'
            + 'secret_env = "BILLING_SECRET"\nretry_min = "50ms"\n'
        )
        env = {**os.environ, "BILLING_SECRET": SECRET.decode()}
        cmd = [sys.executable, "-m", "clobi", "outlets", "run", "--session", str(session.root)]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            client_store = session.open_store()
            wait_for(client_store.list_outlets, 20, "the runner to enable its outlet")
            jobs = client_store.submit(make_submission(count=3))
            client_store.close()
            wait_for(lambda: len(rx.accepted()) == 3, 20, "3 events")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "delivering events to billing" in err and SECRET.decode() not in err
    assert [e["job_id"] for e in rx.accepted()] == jobs


def test_one_runner_delivers_at_a_time_and_another_takes_over_when_it_stops(
    tmp_path: Path,
) -> None:
    stores = [SqliteStore(tmp_path / "clobi.db") for _ in range(3)]
    with receiver() as rx:
        runners = [OutletRunner(s, [hook(rx.url)], poll_s=0.05, lock_ttl_s=1.0) for s in stores[:2]]
        stops = [threading.Event() for _ in runners]
        threads = [
            threading.Thread(target=r.run, args=(e,)) for r, e in zip(runners, stops, strict=True)
        ]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: any(r.elected.is_set() for r in runners), 10, "an election")
            time.sleep(0.5)
            assert [r.elected.is_set() for r in runners].count(True) == 1
            first = next(i for i, r in enumerate(runners) if r.elected.is_set())
            jobs = stores[2].submit(make_submission(count=3))
            wait_for(lambda: len(rx.accepted()) == 3, 10, "3 events")
            stops[first].set()
            threads[first].join(timeout=30)
            wait_for(runners[1 - first].elected.is_set, 10, "the other runner to take over")
            jobs += stores[2].submit(make_submission(count=2))
            wait_for(lambda: len(rx.accepted()) == 5, 10, "2 more events")
        finally:
            for e in stops:
                e.set()
            for t in threads:
                t.join(timeout=30)
            for s in stores:
                s.close()
    assert [e["job_id"] for e in rx.accepted()] == jobs
    assert runners[first].delivered == {"billing": 3}
    assert runners[1 - first].delivered == {"billing": 2}
