"""The web hook outlet: each event POSTed as signed JSON, one request per event, in order.

A request carries `X-Clobi-Timestamp` (epoch seconds when it was sent) and
`X-Clobi-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the hook's secret>`:
the receiver recomputes it (`verify`), and refuses old timestamps so that a captured request
cannot be replayed later. Any answer but 2xx (or none within the timeout) is a failure: the
event is tried again with exponential backoff, and the events after it wait for it.
`X-Clobi-Event-Id` repeats the event id, by which a receiver drops duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from clobi import __version__
from clobi.model.records import Event
from clobi.outlets.base import Outlet, Sent, matches, message_bytes, redact, routing_key, scrub

if TYPE_CHECKING:
    import httpx

    from clobi.outlets.config import WebhookConfig

SIGNATURE_HEADER = "X-Clobi-Signature"
TIMESTAMP_HEADER = "X-Clobi-Timestamp"
EVENT_HEADER = "X-Clobi-Event"
EVENT_ID_HEADER = "X-Clobi-Event-Id"
TOLERANCE_S = 300  # how old a signed request a receiver accepts (`verify`)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Clobi-Signature` value of a request."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """Whether a received request is signed with `secret` and recent (for receivers written in
    Python; `headers` must look names up as HTTP does, whatever their case)."""
    stamp, sent = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not stamp or not sent or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sent, signature(secret, stamp, body))


class WebhookOutlet(Outlet):
    """POSTs events to one URL."""

    def __init__(self, config: WebhookConfig, client: httpx.Client | None = None) -> None:
        import httpx

        self.name, self.backoff = config.name, config.backoff
        self.url, self.shown = config.url, redact(config.url)
        self._secret, self._patterns = config.secret, config.patterns
        self._client = client or httpx.Client(
            timeout=config.timeout_s,
            follow_redirects=False,
            headers={"User-Agent": f"clobi/{__version__}", "Content-Type": "application/json"},
        )

    def send(self, events: Sequence[Event]) -> Sent:
        for i, event in enumerate(events):
            if any(matches(p, routing_key(event)) for p in self._patterns):
                error = self._post(event)
                if error:
                    return Sent(i, error)
        return Sent(len(events))

    def _post(self, event: Event) -> str:
        """'' when the receiver took the event, else why not."""
        import httpx

        body = message_bytes(event)
        stamp = str(int(time.time()))
        headers = {
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature(self._secret, stamp, body),
            EVENT_HEADER: routing_key(event),
            EVENT_ID_HEADER: str(event.id),
        }
        try:
            answer = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{self.shown}: {type(exc).__name__}: {scrub(str(exc), self.url)}"
        if 200 <= answer.status_code < 300:
            return ""
        return f"{self.shown}: HTTP {answer.status_code} {answer.reason_phrase}"

    def close(self) -> None:
        self._client.close()
