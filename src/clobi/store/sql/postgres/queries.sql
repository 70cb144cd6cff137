-- PostgreSQL versions of the shared queries whose SQL differs, and the queries only this engine
-- runs. `-- name: X` starts a query; parameters are `:name` as in ../queries.sql.
--
-- Writers run concurrently here (READ COMMITTED), where SQLite serialises them: a query that
-- reads rows it is about to change locks them, so a concurrent change either waits or is seen.

-- name: insert_spec
INSERT INTO specs (spec_json, input_sha256, owner, idempotency_key, job_count, created_at)
VALUES (:spec_json, :input_sha256, :owner, :idempotency_key, :job_count, :now)
RETURNING id;

-- name: insert_tag
INSERT INTO spec_tags (tag, spec_id) VALUES (:tag, :spec_id) ON CONFLICT DO NOTHING;

-- name: insert_attempt
INSERT INTO attempts (job_id, agent_id, state, started_at, lease_until, workdir)
VALUES (:job_id, :agent_id, 'running', :now, :lease_until, :workdir)
RETURNING id;

-- name: insert_agent
INSERT INTO agents (name, host, pool, state, cpus, memory_bytes, gpus, labels, pid, started_at,
                    last_seen, instance_id, idle_since)
VALUES (:name, :host, :pool, 'up', :cpus, :memory_bytes, :gpus, :labels, :pid, :now, :now,
        :instance_id, :now)
RETURNING id;

-- name: claim_candidates
-- Walks jobs_queue in order (no sort) and skips jobs another claimer has locked, so claimers
-- never wait for each other and never see the same job. The whole window (:scan rows) stays
-- locked until the claim commits, also the rows it did not take: a concurrent claimer on a
-- short queue may come back short for those few milliseconds.
SELECT id, spec_id, array_index, cpus, memory_bytes, gpus, requires
FROM jobs
WHERE state = 'queued' AND not_before <= :now
  AND cpus <= :cpus AND memory_bytes <= :memory AND gpus <= :gpus
ORDER BY priority DESC, id
LIMIT :scan
FOR UPDATE SKIP LOCKED;

-- name: claim_plan
-- Claims must walk jobs_queue, never sort the queue. Without fresh statistics (a big submit
-- before autovacuum analyzed it) the planner can misjudge the queue as tiny and sort it all.
-- For the rest of the transaction: run it after any statement that needs a sort.
SET LOCAL enable_sort = off;

-- name: attempts_for_finish
-- Locked in job id order (as every writer of several jobs locks them), job first, so a
-- concurrent sweep cannot lose an attempt between this read and the report's updates.
SELECT a.id, a.job_id, a.state, j.state, j.current_attempt, j.retries_left, j.attempts,
       j.cancel_requested, j.spec_id
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.id IN ({ids}) AND a.agent_id = :agent_id
ORDER BY j.id, a.id
FOR UPDATE OF j, a;

-- name: start_attempts
-- A claim's attempts, and its jobs marked running with them, in one statement. RETURNING has
-- no order, so each attempt id comes with its job's; a job not queued any more is missing.
WITH a AS (
    INSERT INTO attempts (job_id, agent_id, state, started_at, lease_until, workdir)
    SELECT job_id, :agent_id, 'running', :now, :lease_until, :workdir
    FROM unnest(CAST(:job_ids AS bigint[])) AS job_id
    RETURNING id, job_id
)
UPDATE jobs j SET state = 'running', current_attempt = a.id, attempts = j.attempts + 1,
                  updated_at = :now
FROM a
WHERE j.id = a.job_id AND j.state = 'queued'
RETURNING a.id, j.id;

-- name: insert_events
-- A batch of events in one statement, their ids in the order given (each argument an array,
-- one element per event).
INSERT INTO events (ts, job_id, attempt_id, agent_id, kind, from_state, to_state, detail)
SELECT ts, job_id, attempt_id, agent_id, kind, from_state, to_state, detail
FROM unnest(CAST(:now AS double precision[]), CAST(:job_id AS bigint[]),
            CAST(:attempt_id AS bigint[]), CAST(:agent_id AS bigint[]), CAST(:kind AS text[]),
            CAST(:from_state AS text[]), CAST(:to_state AS text[]), CAST(:detail AS text[]))
     WITH ORDINALITY AS e (ts, job_id, attempt_id, agent_id, kind, from_state, to_state,
                           detail, n)
ORDER BY n;

-- name: set_drain
UPDATE agents SET drain = :drain, state = CASE WHEN :drain <> 0 THEN 'draining' ELSE 'up' END
WHERE id = :agent_id AND state != 'gone';

-- name: expired_attempts
-- Skips attempts whose report or job change is in flight: the next sweep sees what they left.
SELECT a.id, a.job_id, a.agent_id, j.lost_count, j.cancel_requested, j.state, j.current_attempt
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.state = 'running' AND a.lease_until < :now
FOR UPDATE OF j, a SKIP LOCKED;

-- name: silent_agents
-- An agent whose heartbeat is being written is not silent.
SELECT id FROM agents WHERE state != 'gone' AND last_seen < :deadline
FOR UPDATE SKIP LOCKED;

-- name: db_now
-- The database's clock: every server computes leases against the same time.
SELECT extract(epoch FROM clock_timestamp())::double precision;

-- name: lock_jobs
-- In id order, so user actions and reports over several jobs cannot deadlock each other.
SELECT id FROM jobs WHERE id = ANY(:ids) ORDER BY id FOR UPDATE;

-- name: lock_idempotency_key
-- Two submits with one key would both miss it under READ COMMITTED: serialise them per key.
SELECT pg_advisory_xact_lock(:namespace, hashtext(:key));

-- name: notify_work
NOTIFY clobi_work;

-- name: take_advisory_lock
-- The TTL of a lock is the idle timeout of the session that holds it: see PostgresStore.try_lock.
-- A store that did not get it must not be timed out for idling, so only the holder arms it.
WITH got AS (SELECT pg_try_advisory_lock(:namespace, hashtext(:name)) AS held)
SELECT held, set_config('idle_session_timeout', CASE WHEN held THEN :timeout ELSE '0' END, false)
FROM got;

-- name: renew_advisory_lock
SELECT set_config('idle_session_timeout', :timeout, false);

-- name: force_lock
-- Only run right after taking the advisory lock: whoever the row names has lost it.
INSERT INTO locks (name, owner, until) VALUES (:name, :owner, :until)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until;

-- name: session_setup
-- Acknowledged work must survive a server crash, so commits wait for the WAL flush unless the
-- server is already stricter (remote_write, remote_apply). Clobi keeps its connections open on
-- purpose (listeners idle for hours), so the server must not time them out.
SELECT set_config('synchronous_commit',
                  CASE current_setting('synchronous_commit') WHEN 'off' THEN 'on'
                       ELSE current_setting('synchronous_commit') END, false),
       set_config('idle_session_timeout', '0', false);

-- name: create_version_table
CREATE TABLE IF NOT EXISTS clobi_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: insert_instance
INSERT INTO instances (pool, provider, state, cost_per_hour, created_at, reason)
VALUES (:pool, :provider, 'requested', :cost_per_hour, :now, :reason)
RETURNING id;

-- name: set_instance
UPDATE instances SET state = :state, reason = :reason,
    provider_id = coalesce(CAST(:provider_id AS text), provider_id),
    launched_at = CASE WHEN CAST(:state AS text) IN ('booting', 'running') AND launched_at IS NULL
                       THEN CAST(:now AS double precision) ELSE launched_at END,
    ended_at = CASE WHEN CAST(:state AS text) IN ('terminated', 'failed')
                    THEN CAST(:now AS double precision) ELSE ended_at END
WHERE id = :instance_id AND state IN ({expect});

-- name: touch_agent
UPDATE agents SET last_seen = :now,
    idle_since = CASE WHEN CAST(:busy AS integer) <> 0 THEN NULL
                      ELSE coalesce(idle_since, CAST(:now AS double precision)) END
WHERE id = :agent_id AND state != 'gone';

-- name: link_instance
UPDATE instances SET agent_id = :agent_id, state = 'running', ready_at = :now,
    launched_at = coalesce(launched_at, CAST(:now AS double precision)),
    reason = 'its agent joined'
WHERE id = :instance_id AND state IN ('requested', 'booting');
