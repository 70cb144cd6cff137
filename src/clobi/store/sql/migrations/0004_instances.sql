-- 0004: the resource manager: instances, which agent runs on which instance, idle times, and
-- a small key-value table for state the manager carries between ticks.
ALTER TABLE agents ADD COLUMN instance_id INTEGER;
ALTER TABLE agents ADD COLUMN idle_since REAL;

CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    pool TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    cost_per_hour REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    launched_at REAL,
    ready_at REAL,
    ended_at REAL,
    agent_id INTEGER,
    reason TEXT NOT NULL DEFAULT ''
);

CREATE INDEX instances_live ON instances (pool, id) WHERE state NOT IN ('terminated', 'failed');

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
