-- 0004: the resource manager: instances, which agent runs on which instance, idle times, and
-- a small key-value table for state the manager carries between ticks.
ALTER TABLE agents ADD COLUMN instance_id bigint;
ALTER TABLE agents ADD COLUMN idle_since double precision;

CREATE TABLE instances (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool text NOT NULL,
    provider text NOT NULL,
    provider_id text NOT NULL DEFAULT '',
    state text NOT NULL,
    cost_per_hour double precision NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    launched_at double precision,
    ready_at double precision,
    ended_at double precision,
    agent_id bigint,
    reason text NOT NULL DEFAULT ''
);

CREATE INDEX instances_live ON instances (pool, id) WHERE state NOT IN ('terminated', 'failed');

CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL,
    updated_at double precision NOT NULL
);
