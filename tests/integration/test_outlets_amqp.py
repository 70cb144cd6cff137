"""The AMQP outlet against a real RabbitMQ on 127.0.0.1, with real agents running real jobs:
every event reaches a bound queue, each job's in order, also across a broker restart.

Needs RabbitMQ at CLOBI_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2F); the
restart test also needs `rabbitmqctl` and `rabbitmq-server` (it stops and starts the broker,
and starts it again afterwards even when it fails). Skipped without them, except under CI=true.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from clobi.model.records import Event
from clobi.model.states import JobState
from clobi.outlets.base import Backoff
from clobi.outlets.config import AmqpConfig
from clobi.outlets.runner import OutletRunner
from clobi.session import Session
from clobi.store.base import Store
from tests.acceptance.harness import Agents, client_of, fast_session, wait_for
from tests.conftest import need
from tests.contract.conftest import PG_URL, pg_database, pg_reachable

pika = pytest.importorskip("pika")

AMQP_URL = os.environ.get("CLOBI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
JOB = {"command": ["true"], "array": {"count": 150}}


def _broker_up(timeout_s: float = 1.0) -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), timeout=timeout_s):
            return True
    except OSError:
        return False


@pytest.fixture
def broker() -> None:
    need(_broker_up(), f"RabbitMQ at {AMQP_URL} (set CLOBI_TEST_AMQP_URL)")


@pytest.fixture(params=["sqlite", "postgres"])
def session(request: pytest.FixtureRequest, tmp_path: Path, broker: None) -> Iterator[Session]:
    """A session with fast leases on SQLite, or on a fresh PostgreSQL database."""
    made = fast_session(tmp_path / "session")
    if request.param == "sqlite":
        yield made
        return
    need(pg_reachable(), f"PostgreSQL at {PG_URL} (set CLOBI_TEST_PG_URL)")
    with pg_database() as conninfo:
        url = _pg_url(conninfo)
        config = made.root / "clobi.toml"
        config.write_text(config.read_text().replace('"sqlite:clobi.db"', json.dumps(url)))
        yield dataclasses.replace(made, store_url=url)


def _pg_url(conninfo: str) -> str:
    """`pg_database` names a database by libpq conninfo; a session's store is a URL."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)
    password = params.get("password")
    auth = quote(str(params.get("user", ""))) + (f":{quote(str(password))}" if password else "")
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    return f"postgresql://{auth}@{host}:{port}/{params['dbname']}"


@pytest.fixture
def agents(session: Session, tmp_path: Path) -> Iterator[Agents]:
    logs = tmp_path / "logs"
    logs.mkdir()
    pool = Agents(session, logs)
    yield pool
    pool.stop_all()


@dataclasses.dataclass
class Queue:
    """A durable queue bound to the test's own exchange, read after the run."""

    exchange: str
    name: str

    def depth(self) -> int:
        with _channel() as ch:
            return int(ch.queue_declare(self.name, durable=True, passive=True).method.message_count)

    def drain(self) -> list[tuple[int, dict[str, Any]]]:
        """Every message in the queue: (message_id, body), in queue order."""
        got = []
        with _channel() as ch:
            while True:
                method, props, body = ch.basic_get(self.name, auto_ack=True)
                if method is None:
                    return got
                assert props.delivery_mode == 2 and props.content_type == "application/json"
                message = json.loads(body)
                assert method.routing_key == message["type"] == props.type
                got.append((int(props.message_id), message))


@contextlib.contextmanager
def _channel() -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield conn.channel()
    finally:
        conn.close()


@pytest.fixture
def queue(broker: None) -> Iterator[Queue]:
    tag = uuid.uuid4().hex[:8]
    made = Queue(f"clobi.test.{tag}", f"clobi.test.{tag}.all")
    with _channel() as ch:
        ch.exchange_declare(made.exchange, "topic", durable=True)
        ch.queue_declare(made.name, durable=True)
        ch.queue_bind(made.name, made.exchange, "#")
    yield made
    _start_broker()  # a failed restart test must not leave the broker down
    with _channel() as ch:
        ch.queue_delete(made.name)
        ch.exchange_delete(made.exchange)


@contextlib.contextmanager
def outlets(session: Session, exchange: str) -> Iterator[OutletRunner]:
    """A runner publishing to `exchange`, in a thread with its own store."""
    from clobi.outlets.amqp import AmqpOutlet

    store = session.open_store()
    config = AmqpConfig(url=AMQP_URL, exchange=exchange, backoff=Backoff(0.2, 1.0))
    runner = OutletRunner(store, [AmqpOutlet(config)], poll_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        wait_for(runner.elected.is_set, 20, "the runner to be elected")
        yield runner
    finally:
        stop.set()
        thread.join(timeout=60)
        store.close()


def _all_events(store: Store) -> list[Event]:
    found: list[Event] = []
    while page := store.events(after_id=found[-1].id if found else 0):
        found += page
    return found


def _run_to_the_end(store: Store, ids: list[int], timeout_s: float = 120) -> None:
    def done() -> bool:
        counts = store.count_states(ids)
        return counts.get(JobState.SUCCEEDED, 0) == len(ids)

    wait_for(done, timeout_s, f"{len(ids)} jobs to succeed")
    # not take_deliveries: it answers [] while the head of the queue is backing off
    wait_for(lambda: _pending(store, "amqp") == 0, 60, "the outbox to empty")


def _pending(store: Store, outlet: str) -> int:
    return sum(o.pending for o in store.list_outlets() if o.name == outlet)


def _first_per_job(messages: list[tuple[int, dict[str, Any]]]) -> dict[int, list[int]]:
    """Each job's event ids in the order they first reached the queue."""
    seen: set[int] = set()
    per_job: dict[int, list[int]] = {}
    for message_id, body in messages:
        if message_id not in seen and body["job_id"] is not None:
            per_job.setdefault(body["job_id"], []).append(message_id)
        seen.add(message_id)
    return per_job


def test_every_job_event_of_a_run_reaches_the_queue_once_in_order(
    session: Session, agents: Agents, queue: Queue
) -> None:
    with client_of(session) as client, outlets(session, queue.exchange) as runner:
        ids = client.submit(_submission())
        agents.start(cpus=2)
        agents.start(cpus=2)
        _run_to_the_end(client.store, ids)
        events = _all_events(client.store)
    messages = queue.drain()
    assert [m for m, _ in messages if [x for x, _ in messages].count(m) > 1] == []
    assert sorted(m for m, _ in messages) == [e.id for e in events]
    per_job = _first_per_job(messages)
    assert sorted(per_job) == ids
    by_id = {e.id: e for e in events}
    for job_id, got in per_job.items():
        assert got == sorted(got), f"job {job_id}: out of order"
        assert [by_id[i].kind for i in got] == ["submitted", "started", "succeeded"]
    assert runner.delivered["amqp"] == len(events)
    body = dict(messages[0][1])
    assert body == {**body, "id": messages[0][0], "type": "job.submitted", "kind": "submitted"}


@pytest.mark.slow
def test_after_a_broker_restart_during_a_run_no_event_is_missing(
    session: Session, agents: Agents, queue: Queue
) -> None:
    need(
        bool(shutil.which("rabbitmqctl") and shutil.which("rabbitmq-server")),
        "rabbitmqctl and rabbitmq-server, to restart the broker",
    )
    with client_of(session) as client, outlets(session, queue.exchange):
        ids = client.submit(_submission(sleep=True))
        agents.start(cpus=2)
        agents.start(cpus=2)
        wait_for(lambda: queue.depth() > 20, 30, "the first events published")
        _stop_broker()
        ids += client.submit(_submission())  # jobs go on finishing while it is down
        time.sleep(2)
        _start_broker()
        ids += client.submit(_submission())
        _run_to_the_end(client.store, ids, timeout_s=180)
        events = _all_events(client.store)
    messages = queue.drain()
    assert {m for m, _ in messages} == {e.id for e in events}  # (duplicates allowed)
    per_job = _first_per_job(messages)
    assert sorted(per_job) == sorted(ids)
    assert [j for j, got in per_job.items() if got != sorted(got)] == []


def _submission(sleep: bool = False) -> dict[str, Any]:
    if sleep:
        return {"command": ["sleep", "0.05"], "array": {"count": 150}}
    return JOB


def _stop_broker() -> None:
    subprocess.run(["rabbitmqctl", "stop"], capture_output=True, timeout=60, check=True)
    wait_for(lambda: not _broker_up(0.2), 30, "RabbitMQ to stop")


def _start_broker() -> None:
    """Start RabbitMQ unless it answers already; wait until it does."""
    if _broker_up():
        return
    subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, timeout=60, check=False)
    wait_for(_broker_up, 60, "RabbitMQ to start")
    subprocess.run(["rabbitmqctl", "await_startup"], capture_output=True, timeout=60, check=False)


def test_a_connection_cut_in_the_middle_of_a_batch_loses_no_event(
    broker: None, queue: Queue, tmp_path: Path
) -> None:
    from clobi.outlets.amqp import AmqpOutlet
    from clobi.store.sqlite import SqliteStore
    from tests.conftest import make_submission

    store = SqliteStore(tmp_path / "clobi.db")
    parts = urlsplit(AMQP_URL)
    with _cutting_proxy((parts.hostname or "", parts.port or 5672), cut_after=40_000) as port:
        url = AMQP_URL.replace(f":{parts.port or 5672}/", f":{port}/")
        outlet = AmqpOutlet(AmqpConfig(url=url, exchange=queue.exchange, backoff=Backoff(0, 0)))
        runner = OutletRunner(store, [outlet])
        try:
            store.enable_outlet("amqp")
            store.submit(make_submission(count=300))
            first = store.take_deliveries("amqp", 1000)
            runner.deliver_once(outlet)  # cut mid-batch: some confirmed at most
            cut = store.take_deliveries("amqp", 1000)
            assert 0 < len(cut) < 300 and cut[0].attempts == 1, cut[:1]
            assert "broker amqp://" in cut[0].error and "guest" not in cut[0].error
            while store.take_deliveries("amqp"):
                runner.deliver_once(outlet)
        finally:
            outlet.close()
            store.close()
    messages = queue.drain()
    assert {m for m, _ in messages} == {d.event.id for d in first}
    assert [m for m, _ in messages][: 300 - len(cut)] == [d.event.id for d in first][
        : 300 - len(cut)
    ]


@contextlib.contextmanager
def _cutting_proxy(target: tuple[str, int], cut_after: int) -> Iterator[int]:
    """A TCP proxy to `target` whose first connection stops passing what the client sends
    after `cut_after` bytes, and is cut half a second later; later connections pass
    untouched."""
    listener = socket.create_server(("127.0.0.1", 0))
    cut = threading.Event()
    opened: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    time.sleep(0.5)  # the broker confirms what it got; then the line dies
                    break
                dst.sendall(data)
                sent += len(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(target)
                opened.extend((client, upstream))
                limit = None if cut.is_set() else cut_after
                cut.set()
                threading.Thread(target=pump, args=(client, upstream, limit), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        for sock in opened:
            sock.close()
