-- 0005: event outlets (AMQP, webhooks). While an outlet is enabled, a trigger queues every new
-- event for it in the outbox, in the transaction that inserts the event; its deliverer deletes
-- an entry once the outlet has taken the event. No code path that inserts events changes.
CREATE TABLE outlets (
    name text PRIMARY KEY,
    enabled integer NOT NULL DEFAULT 1,
    updated_at double precision NOT NULL
);

CREATE TABLE outbox (
    outlet text NOT NULL,
    event_id bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_try double precision NOT NULL DEFAULT 0,
    error text NOT NULL DEFAULT '',
    PRIMARY KEY (outlet, event_id)
);

CREATE FUNCTION clobi_outbox_fill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (outlet, event_id) SELECT name, NEW.id FROM outlets WHERE enabled = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_outbox AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION clobi_outbox_fill();
