-- 0005: event outlets (AMQP, webhooks). While an outlet is enabled, a trigger queues every new
-- event for it in the outbox, in the transaction that inserts the event; its deliverer deletes
-- an entry once the outlet has taken the event. No code path that inserts events changes.
CREATE TABLE outlets (
    name TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL
);

CREATE TABLE outbox (
    outlet TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (outlet, event_id)
) WITHOUT ROWID;

CREATE TRIGGER events_outbox AFTER INSERT ON events
BEGIN
    INSERT INTO outbox (outlet, event_id) SELECT name, NEW.id FROM outlets WHERE enabled = 1;
END;
