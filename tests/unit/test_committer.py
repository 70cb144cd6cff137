"""The agent's committer: one call at a time on a thread, its end signalled on a descriptor."""

from __future__ import annotations

import select
import threading
import time

import pytest

from clobi.agent.committer import Committer


def readable(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_a_call_runs_on_another_thread_and_its_value_is_taken_once() -> None:
    committer = Committer()
    threads: list[str] = []

    def call() -> int:
        threads.append(threading.current_thread().name)
        return 42

    committer.submit(call)
    assert readable(committer.fileno(), 5.0)
    done = committer.take()
    assert done is not None and done.value == 42 and done.error is None
    assert threads == ["clobi-commit"]
    assert committer.take() is None
    assert not committer.busy
    committer.close()


def test_the_descriptor_is_readable_only_while_a_result_waits() -> None:
    committer = Committer()
    release = threading.Event()
    committer.submit(release.wait)
    assert committer.busy
    assert not readable(committer.fileno(), 0.05)
    assert committer.take() is None  # still running
    release.set()
    assert readable(committer.fileno(), 5.0)
    assert committer.take() is not None
    assert not readable(committer.fileno(), 0.05)  # nothing stale left to wake the loop
    committer.submit(lambda: 1)
    assert readable(committer.fileno(), 5.0)
    committer.close()


def test_an_exception_in_the_call_is_handed_back_not_raised_on_the_thread() -> None:
    committer = Committer()

    def fail() -> None:
        raise ValueError("store down")

    committer.submit(fail)
    done = committer.take(wait=True)
    assert done is not None and isinstance(done.error, ValueError)
    committer.submit(lambda: "still works")
    done = committer.take(wait=True)
    assert done is not None and done.value == "still works"
    committer.close()


def test_a_second_call_is_refused_until_the_first_result_is_taken() -> None:
    committer = Committer()
    committer.submit(lambda: time.sleep(0.05))
    with pytest.raises(RuntimeError, match="busy"):
        committer.submit(lambda: None)
    assert committer.take(wait=True) is not None
    committer.submit(lambda: None)
    committer.close()


def test_closing_lets_a_running_call_end() -> None:
    committer = Committer()
    ended = threading.Event()

    def slow() -> None:
        time.sleep(0.1)
        ended.set()

    committer.submit(slow)
    committer.close()
    assert ended.is_set()
