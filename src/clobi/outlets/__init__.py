"""Event outlets: the session's events published to a RabbitMQ topic exchange and POSTed to
web hooks, at least once and in order per job, from the store's outbox (see docs/events.md)."""
