"""The AMQP outlet: events published to a RabbitMQ topic exchange, with publisher confirms.

Each event is a persistent message on the durable topic exchange `clobi.events` (by default),
routed by its kind (`job.succeeded`, `agent.lost`, `instance.running`; see
`base.routing_key`), with `message_id` = the event id and a JSON body (`base.message`). Queues
bound to the exchange get the events they ask for; messages that no queue is bound for are
dropped by the broker, as AMQP does.

A batch is published in one go on a channel in confirm mode and counts as sent only as far as
the broker has confirmed it, in order: an event is removed from the outbox only once the
broker has taken responsibility for it (for a durable queue: written it to disk). A broker
that restarts or cannot be reached ends the connection; the outlet connects again on its next
send, and the unconfirmed events go again (consumers drop duplicates by `message_id`).

pika's BlockingConnection confirms one message at a time when its channel is put in confirm
mode (~800 messages/s here): this module turns confirm mode on on the channel underneath and
collects the broker's acks itself, so a whole batch waits for one round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from clobi.errors import MissingExtra
from clobi.model.records import Event
from clobi.outlets.base import Outlet, Sent, message_bytes, redact, routing_key, scrub
from clobi.outlets.config import AmqpConfig

try:
    import pika  # type: ignore[import-untyped]
    import pika.exceptions  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise MissingExtra(f"the AMQP outlet needs pika: `pip install clobi[amqp]` ({exc})") from None

CONFIRM_TIMEOUT_S = 30.0  # a batch the broker has not confirmed by then is sent again
CONNECT_TIMEOUT_S = 10.0
_DRIVER_ERRORS = (pika.exceptions.AMQPError, OSError)


class AmqpOutlet(Outlet):
    """Publishes events to a topic exchange."""

    batch = 500

    def __init__(self, config: AmqpConfig, confirm_timeout_s: float = CONFIRM_TIMEOUT_S) -> None:
        self.name, self.backoff = config.name, config.backoff
        self.url, self.shown, self.exchange = config.url, redact(config.url), config.exchange
        self.confirm_timeout_s = confirm_timeout_s
        self._link: _Link | None = None
        # pika logs every lost connection with a traceback at ERROR; the runner already
        # says what failed, once per try.
        logging.getLogger("pika").setLevel(logging.CRITICAL)

    def send(self, events: Sequence[Event]) -> Sent:
        try:
            link = self._connected()
            return link.publish(events, self.confirm_timeout_s)
        except _DRIVER_ERRORS as exc:
            confirmed = self._link.confirmed() if self._link is not None else 0
            self._drop()
            return Sent(confirmed, self._why(exc))

    def idle(self) -> None:
        """Answer the broker's heartbeats; drop a connection that died meanwhile."""
        if self._link is None:
            return
        try:
            self._link.connection.process_data_events(time_limit=0)
        except _DRIVER_ERRORS:
            self._drop()

    def close(self) -> None:
        self._drop()

    def _connected(self) -> _Link:
        if self._link is not None and not self._link.connection.is_open:
            self._drop()
        if self._link is None:
            self._link = _Link.open(self.url, self.exchange)
        return self._link

    def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _why(self, exc: BaseException) -> str:
        text = str(exc) or repr(exc)
        return scrub(f"broker {self.shown}: {type(exc).__name__}: {text}", self.url)


class _Link:
    """One connection and its confirm-mode channel, with the broker's acks counted by
    delivery tag (the channel numbers published messages 1, 2, 3, … in confirm mode)."""

    def __init__(self, connection: Any, channel: Any, exchange: str) -> None:
        self.connection, self.channel, self.exchange = connection, channel, exchange
        self.next_tag = 1
        self.acked_to = 0  # every tag up to this one is acked
        self.acked: set[int] = set()  # acked tags above acked_to (acks may be single)
        self.nacked: set[int] = set()
        self.first_tag, self.last_tag = 1, 0  # the current batch's messages

    @classmethod
    def open(cls, url: str, exchange: str) -> _Link:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = CONNECT_TIMEOUT_S
        params.blocked_connection_timeout = CONFIRM_TIMEOUT_S
        params.client_properties = {"connection_name": "clobi outlets"}
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.exchange_declare(exchange, exchange_type="topic", durable=True)
            link = cls(connection, channel, exchange)
            link._confirm_mode()
        except BaseException:
            _close_quietly(connection)
            raise
        return link

    def _confirm_mode(self) -> None:
        # BlockingChannel.confirm_delivery would make every publish wait for its own ack;
        # the channel underneath confirms asynchronously, reporting to `_on_confirm`.
        ready: list[bool] = []
        self.channel._impl.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True)
        )
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not ready:
            if time.monotonic() > deadline:
                raise pika.exceptions.AMQPChannelError("confirm.select got no answer")
            self.connection.process_data_events(time_limit=0.1)

    def publish(self, events: Sequence[Event], timeout_s: float) -> Sent:
        """Publish in order; wait for the broker's confirms; count the confirmed prefix."""
        self.first_tag = self.next_tag
        for event in events:
            self.channel._impl.basic_publish(
                self.exchange, routing_key(event), message_bytes(event), _properties(event)
            )
            self.next_tag += 1
        self.last_tag = self.next_tag - 1
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.confirmed() == len(events) or self.nacked:
                break
            self.connection.process_data_events(time_limit=left)
        confirmed = self.confirmed()
        if confirmed == len(events):
            return Sent(confirmed)
        self.close()  # acks still due would be counted against the next batch's tags
        why = "refused (nack)" if self.nacked else f"not confirmed within {timeout_s:g} s"
        return Sent(confirmed, f"event {events[confirmed].id}: the broker {why}")

    def confirmed(self) -> int:
        """How many messages of the current batch, from its first, the broker confirmed."""
        tag = self.first_tag
        while tag <= self.last_tag and self._acked(tag):
            tag += 1
        return tag - self.first_tag

    def _acked(self, tag: int) -> bool:
        return tag <= self.acked_to or tag in self.acked

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, multiple = int(method.delivery_tag), bool(method.multiple)
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked.add(tag)
        elif multiple:
            self.acked_to = max(self.acked_to, tag)
            self.acked = {t for t in self.acked if t > tag}
        else:
            self.acked.add(tag)
        if self.nacked or self._acked(self.last_tag):
            # process_data_events returns early only for events of its own: queue one, so
            # that `publish` stops waiting as soon as its batch is settled.
            self.connection.add_callback_threadsafe(_nothing)

    def close(self) -> None:
        _close_quietly(self.connection)


def _properties(event: Event) -> Any:
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=str(event.id),
        timestamp=int(event.ts),
        type=routing_key(event),
        app_id="clobi",
    )


def _nothing() -> None:
    pass


def _close_quietly(connection: Any) -> None:
    try:
        if connection.is_open:
            connection.close()
    except _DRIVER_ERRORS:
        pass
