-- The current schema of a Clobi store on PostgreSQL. Migrations in migrations/ must rebuild
-- exactly this (tests/integration/test_postgres_engine.py compares the catalogs). Columns
-- mirror the SQLite schema so the shared queries run unchanged: times are epoch seconds,
-- flags are 0/1 integers.
CREATE TABLE specs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    spec_json text NOT NULL,
    input_sha256 text,
    owner text NOT NULL DEFAULT '',
    idempotency_key text UNIQUE,
    job_count integer NOT NULL,
    created_at double precision NOT NULL
);

CREATE TABLE spec_tags (
    tag text NOT NULL,
    spec_id bigint NOT NULL,
    PRIMARY KEY (tag, spec_id)
);

-- Reading a page of jobs fetches their tags by spec id.
CREATE INDEX spec_tags_spec ON spec_tags (spec_id);

CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    spec_id bigint NOT NULL,
    array_index integer,
    name text NOT NULL DEFAULT '',
    owner text NOT NULL DEFAULT '',
    state text NOT NULL,
    priority integer NOT NULL,
    cpus double precision NOT NULL,
    memory_bytes bigint NOT NULL,
    gpus integer NOT NULL,
    requires text,
    not_before double precision NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    retries_left integer NOT NULL,
    lost_count integer NOT NULL DEFAULT 0,
    exit_code integer,
    reason text NOT NULL DEFAULT '',
    current_attempt bigint,
    cancel_requested integer NOT NULL DEFAULT 0
)
-- A queue churns: every job leaves dead rows behind it, ahead of the live ones in jobs_queue.
-- Vacuum and analyze it long before the defaults (20% and 10% of the table) would.
WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01);

-- The queue: claims walk this in order and stop after a few rows, however long the queue.
CREATE INDEX jobs_queue ON jobs (priority DESC, id) WHERE state = 'queued';

CREATE INDEX jobs_state ON jobs (state, id);

CREATE INDEX jobs_spec ON jobs (spec_id);

-- Job listings: a user's own jobs, and jobs by priority (0006).
CREATE INDEX jobs_owner ON jobs (owner, id);

CREATE INDEX jobs_priority ON jobs (priority, id);

CREATE TABLE attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    agent_id bigint NOT NULL,
    state text NOT NULL,
    started_at double precision NOT NULL,
    ended_at double precision,
    lease_until double precision NOT NULL,
    exit_code integer,
    reason text NOT NULL DEFAULT '',
    workdir text NOT NULL DEFAULT '',
    output_key text,
    output_inline bytea,
    output_size bigint NOT NULL DEFAULT 0,
    output_sha256 text NOT NULL DEFAULT ''
);

CREATE INDEX attempts_job ON attempts (job_id);

CREATE INDEX attempts_running ON attempts (agent_id, lease_until) WHERE state = 'running';

CREATE TABLE agents (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    host text NOT NULL,
    pool text NOT NULL,
    state text NOT NULL,
    cpus double precision NOT NULL,
    memory_bytes bigint NOT NULL,
    gpus integer NOT NULL,
    labels text NOT NULL DEFAULT '',
    pid integer NOT NULL DEFAULT 0,
    started_at double precision NOT NULL,
    last_seen double precision NOT NULL,
    drain integer NOT NULL DEFAULT 0,
    instance_id bigint,
    idle_since double precision
);

CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts double precision NOT NULL,
    job_id bigint,
    attempt_id bigint,
    agent_id bigint,
    kind text NOT NULL,
    from_state text NOT NULL DEFAULT '',
    to_state text NOT NULL DEFAULT '',
    detail text NOT NULL DEFAULT ''
);

CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE locks (
    name text PRIMARY KEY,
    owner text NOT NULL,
    until double precision NOT NULL
);

CREATE TABLE tokens (
    id text PRIMARY KEY,
    secret_sha256 text NOT NULL,
    role text NOT NULL,
    name text NOT NULL,
    pool text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    expires_at double precision,
    revoked integer NOT NULL DEFAULT 0,
    used_at double precision
);

CREATE TABLE log_tails (
    attempt_id bigint NOT NULL,
    stream text NOT NULL,
    start_offset bigint NOT NULL,
    data bytea NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (attempt_id, stream)
);

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

-- The dashboard's time series (0006).
CREATE TABLE series (
    metric text NOT NULL,
    step_s integer NOT NULL,
    bucket bigint NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (metric, step_s, bucket)
);

-- Pruning drops an archive's oldest points, whatever their metric.
CREATE INDEX series_age ON series (step_s, bucket);

-- Event outlets (0005): the trigger queues each new event for every enabled outlet.
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
