-- The current schema of a Clobi store. Migrations in migrations/ must rebuild exactly this.
CREATE TABLE specs (
    id INTEGER PRIMARY KEY,
    spec_json TEXT NOT NULL,
    input_sha256 TEXT,
    owner TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT UNIQUE,
    job_count INTEGER NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE spec_tags (
    tag TEXT NOT NULL,
    spec_id INTEGER NOT NULL,
    PRIMARY KEY (tag, spec_id)
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    spec_id INTEGER NOT NULL,
    array_index INTEGER,
    name TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    cpus REAL NOT NULL,
    memory_bytes INTEGER NOT NULL,
    gpus INTEGER NOT NULL,
    requires TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries_left INTEGER NOT NULL,
    lost_count INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    current_attempt INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX jobs_queue ON jobs (priority DESC, id) WHERE state = 'queued';

CREATE INDEX jobs_state ON jobs (state, id);

CREATE INDEX jobs_spec ON jobs (spec_id);

CREATE INDEX jobs_owner ON jobs (owner, id);

CREATE INDEX jobs_priority ON jobs (priority, id);

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    agent_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    lease_until REAL NOT NULL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    workdir TEXT NOT NULL DEFAULT '',
    output_key TEXT,
    output_inline BLOB,
    output_size INTEGER NOT NULL DEFAULT 0,
    output_sha256 TEXT NOT NULL DEFAULT ''
);

CREATE INDEX attempts_job ON attempts (job_id);

CREATE INDEX attempts_running ON attempts (agent_id, lease_until) WHERE state = 'running';

-- instance_id and idle_since came with migration 0004: SQLite keeps ALTER TABLE's text as is.
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    cpus REAL NOT NULL,
    memory_bytes INTEGER NOT NULL,
    gpus INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    drain INTEGER NOT NULL DEFAULT 0
, instance_id INTEGER, idle_since REAL);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    job_id INTEGER,
    attempt_id INTEGER,
    agent_id INTEGER,
    kind TEXT NOT NULL,
    from_state TEXT NOT NULL DEFAULT '',
    to_state TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);

CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    pool TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked INTEGER NOT NULL DEFAULT 0,
    used_at REAL
);

CREATE TABLE log_tails (
    attempt_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (attempt_id, stream)
);

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

CREATE TABLE series (
    metric TEXT NOT NULL,
    step_s INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (metric, step_s, bucket)
) WITHOUT ROWID;

CREATE INDEX series_age ON series (step_s, bucket);

-- Event outlets (0005): the trigger queues each new event for every enabled outlet.
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
