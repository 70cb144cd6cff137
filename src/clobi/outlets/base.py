"""The outlet contract, the message every outlet sends, and how a failing one backs off.

An outlet gets a session's events in order (oldest first) and says how many of them, counted
from the first, it has handed over for good: a broker confirmed them, a receiver answered 2xx.
The runner deletes those from the store's outbox and tries the rest again later, so an event
is delivered at least once and each job's events arrive in order.
"""

from __future__ import annotations

import json
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from clobi.model.records import Event

# Event kinds that start with one of these are about that thing (`agent_lost` → agent.lost);
# the other kinds of an event with a job are the job's (`succeeded` → job.succeeded).
SUBJECTS = ("agent", "instance", "manager", "token")


@dataclass(frozen=True)
class Sent:
    """What one `Outlet.send` achieved: the first `count` events are delivered; `error` says
    why the next one was not (empty when all were)."""

    count: int
    error: str = ""


@dataclass(frozen=True)
class Backoff:
    """Delays between tries of a failing delivery: doubling from `min_s` up to `max_s`, each
    drawn from its upper half so that many senders do not retry in step."""

    min_s: float = 1.0
    max_s: float = 300.0

    def delay_s(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(max(failures, 1) - 1, 60))
        return random.uniform(ceiling / 2, ceiling)


class Outlet(ABC):
    """Somewhere a session's events go."""

    name: str  # the outlet's name in the store (its outbox entries carry it)
    backoff: Backoff
    batch: int = 100  # events per `send` at most

    @abstractmethod
    def send(self, events: Sequence[Event]) -> Sent:
        """Deliver `events` in their order, stopping at the first that fails. Never raises for
        a failed delivery: the error goes into `Sent.error`, without secrets."""

    def idle(self) -> None:  # noqa: B027 - most outlets have nothing to do between sends
        """Called when there was nothing to send (keep a connection alive, notice it died)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def routing_key(event: Event) -> str:
    """`job.succeeded`, `agent.lost`, `instance.running`, `manager.launch`, …"""
    subject, _, rest = event.kind.partition("_")
    if subject in SUBJECTS and rest:
        return f"{subject}.{rest}"
    return f"{'job' if event.job_id is not None else 'session'}.{event.kind}"


def message(event: Event) -> dict[str, object]:
    """The JSON object sent for an event (`type` is its routing key)."""
    return {
        "id": event.id,
        "type": routing_key(event),
        "kind": event.kind,
        "ts": event.ts,
        "job_id": event.job_id,
        "attempt_id": event.attempt_id,
        "agent_id": event.agent_id,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "detail": event.detail,
    }


def message_bytes(event: Event) -> bytes:
    """`message(event)` as compact UTF-8 JSON."""
    return json.dumps(message(event), separators=(",", ":"), ensure_ascii=False).encode()


_PATTERN_WORD = re.compile(r"[A-Za-z0-9_-]+|\*|#")


def check_pattern(pattern: str) -> str:
    """A routing-key pattern as AMQP topic bindings read them: dot-separated words, `*` for
    one word, `#` for any number. Raises ValueError."""
    if not pattern or not all(_PATTERN_WORD.fullmatch(w) for w in pattern.split(".")):
        raise ValueError(f"{pattern!r}: expected words, * and # separated by dots, e.g. job.*")
    return pattern


def matches(pattern: str, key: str) -> bool:
    """Whether routing key `key` matches a topic pattern (`job.*`, `#.lost`, `#`)."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


def redact(url: str) -> str:
    """A URL fit for messages: the password masked, the query and fragment (which may hold
    tokens) left out."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with the URL's password masked wherever it appears."""
    text = text.replace(url, redact(url))
    password = urlsplit(url).password
    for form in {password, unquote(password)} if password else ():
        text = text.replace(form, "***")  # (a short password masks more than it must)
    return text
