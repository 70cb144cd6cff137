-- Named queries of the SQL store. `-- name: X` starts a query; parameters are `:name`.

-- name: insert_spec
INSERT INTO specs (spec_json, input_sha256, owner, idempotency_key, job_count, created_at)
VALUES (:spec_json, :input_sha256, :owner, :idempotency_key, :job_count, :now);

-- name: spec_by_key
SELECT id FROM specs WHERE idempotency_key = :key;

-- name: insert_tag
INSERT OR IGNORE INTO spec_tags (tag, spec_id) VALUES (:tag, :spec_id);

-- name: insert_job
INSERT INTO jobs (spec_id, array_index, name, owner, state, priority, cpus, memory_bytes, gpus,
                  requires, created_at, updated_at, retries_left)
VALUES (:spec_id, :array_index, :name, :owner, 'queued', :priority, :cpus, :memory_bytes, :gpus,
        :requires, :now, :now, :retries_left);

-- name: job_ids_of_spec
SELECT id FROM jobs WHERE spec_id = :spec_id ORDER BY id;

-- name: insert_event
INSERT INTO events (ts, job_id, attempt_id, agent_id, kind, from_state, to_state, detail)
VALUES (:now, :job_id, :attempt_id, :agent_id, :kind, :from_state, :to_state, :detail);

-- name: select_jobs
SELECT j.id, j.spec_id, j.name, j.state, j.priority, j.array_index, j.created_at, j.updated_at,
       j.attempts, j.retries_left, j.lost_count, j.exit_code, j.reason, j.owner,
       j.current_attempt, j.cancel_requested, j.not_before
FROM jobs j

-- name: spec_of_job
SELECT s.id, s.spec_json, s.input_sha256 FROM jobs j JOIN specs s ON s.id = j.spec_id
WHERE j.id = :job_id;

-- name: spec_by_id
SELECT spec_json, input_sha256 FROM specs WHERE id = :spec_id;

-- name: tags_of_specs
SELECT spec_id, tag FROM spec_tags WHERE spec_id IN ({ids}) ORDER BY tag;

-- name: count_states
SELECT state, count(*) FROM jobs GROUP BY state;

-- name: select_attempts
SELECT a.id, a.job_id, a.agent_id, coalesce(g.name, ''), a.state, a.started_at, a.ended_at,
       a.lease_until, a.exit_code, a.reason, a.workdir,
       (a.output_key IS NOT NULL OR a.output_inline IS NOT NULL)
FROM attempts a LEFT JOIN agents g ON g.id = a.agent_id
WHERE a.job_id = :job_id ORDER BY a.id;

-- name: select_events
SELECT id, ts, job_id, attempt_id, agent_id, kind, from_state, to_state, detail
FROM events WHERE id > :after_id {job_clause} ORDER BY id LIMIT :limit;

-- name: output_of_attempt
SELECT id, job_id, output_key, output_inline, output_size, output_sha256
FROM attempts WHERE id = :attempt_id AND job_id = :job_id;

-- name: latest_output
SELECT id, job_id, output_key, output_inline, output_size, output_sha256
FROM attempts
WHERE job_id = :job_id AND (output_key IS NOT NULL OR output_inline IS NOT NULL)
ORDER BY id DESC LIMIT 1;

-- name: claim_candidates
-- INDEXED BY: the planner otherwise picks jobs_state and sorts the whole queue on every claim.
SELECT id, spec_id, array_index, cpus, memory_bytes, gpus, requires
FROM jobs INDEXED BY jobs_queue
WHERE state = 'queued' AND not_before <= :now
  AND cpus <= :cpus AND memory_bytes <= :memory AND gpus <= :gpus
ORDER BY priority DESC, id
LIMIT :scan;

-- name: insert_attempt
INSERT INTO attempts (job_id, agent_id, state, started_at, lease_until, workdir)
VALUES (:job_id, :agent_id, 'running', :now, :lease_until, :workdir);

-- name: mark_running
UPDATE jobs SET state = 'running', current_attempt = :attempt_id, attempts = attempts + 1,
                updated_at = :now
WHERE id = :job_id AND state = 'queued';

-- name: attempts_for_finish
SELECT a.id, a.job_id, a.state, j.state, j.current_attempt, j.retries_left, j.attempts,
       j.cancel_requested, j.spec_id
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.id IN ({ids}) AND a.agent_id = :agent_id;

-- name: end_attempt
UPDATE attempts
SET state = :state, ended_at = :now, exit_code = :exit_code, reason = :reason,
    output_key = :output_key, output_inline = :output_inline, output_size = :output_size,
    output_sha256 = :output_sha256
WHERE id = :attempt_id AND state = 'running';

-- name: end_job
UPDATE jobs
SET state = :state, exit_code = :exit_code, reason = :reason, updated_at = :now,
    current_attempt = NULL
WHERE id = :job_id AND state = 'running' AND current_attempt = :attempt_id;

-- name: requeue_job_retry
UPDATE jobs
SET state = 'queued', exit_code = :exit_code, reason = :reason, updated_at = :now,
    current_attempt = NULL, retries_left = retries_left - 1, not_before = :not_before
WHERE id = :job_id AND state = 'running' AND current_attempt = :attempt_id;

-- name: renew_leases
UPDATE attempts SET lease_until = :lease_until
WHERE agent_id = :agent_id AND state = 'running' AND lease_until >= :now AND id IN ({ids});

-- name: running_of_agent
SELECT a.id, j.cancel_requested FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.agent_id = :agent_id AND a.state = 'running' AND a.lease_until >= :now;

-- name: touch_agent
UPDATE agents SET last_seen = :now,
    idle_since = CASE WHEN :busy <> 0 THEN NULL ELSE coalesce(idle_since, :now) END
WHERE id = :agent_id AND state != 'gone';

-- name: agent_flags
SELECT state, drain FROM agents WHERE id = :agent_id;

-- name: insert_agent
INSERT INTO agents (name, host, pool, state, cpus, memory_bytes, gpus, labels, pid, started_at,
                    last_seen, instance_id, idle_since)
VALUES (:name, :host, :pool, 'up', :cpus, :memory_bytes, :gpus, :labels, :pid, :now, :now,
        :instance_id, :now);

-- name: set_drain
UPDATE agents SET drain = :drain, state = CASE WHEN :drain THEN 'draining' ELSE 'up' END
WHERE id = :agent_id AND state != 'gone';

-- name: agent_gone
UPDATE agents SET state = 'gone', last_seen = :now WHERE id = :agent_id;

-- name: select_agents
SELECT g.id, g.name, g.host, g.pool, g.state, g.cpus, g.memory_bytes, g.gpus, g.labels,
       g.started_at, g.last_seen, g.drain,
       (SELECT count(*) FROM attempts a WHERE a.agent_id = g.id AND a.state = 'running'),
       g.pid, g.instance_id, g.idle_since
FROM agents g {where} ORDER BY g.id;

-- name: cancel_queued
UPDATE jobs SET state = 'cancelled', reason = 'killed by user', updated_at = :now
WHERE id = :job_id AND state = 'queued';

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1, updated_at = :now
WHERE id = :job_id AND state = 'running';

-- name: delete_job
DELETE FROM jobs WHERE id = :job_id AND state != 'running';

-- name: delete_attempts_of_job
DELETE FROM attempts WHERE job_id = :job_id;

-- name: retry_job
UPDATE jobs
SET state = 'queued', retries_left = :retries_left, lost_count = 0, cancel_requested = 0,
    not_before = 0, exit_code = NULL, reason = 'retried by user', updated_at = :now
WHERE id = :job_id AND state IN ('failed', 'timed_out', 'cancelled');

-- name: take_lock
INSERT INTO locks (name, owner, until) VALUES (:name, :owner, :until)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE locks.owner = excluded.owner OR locks.until < :now;

-- name: lock_owner
SELECT owner FROM locks WHERE name = :name;

-- name: expired_attempts
SELECT a.id, a.job_id, a.agent_id, j.lost_count, j.cancel_requested, j.state, j.current_attempt
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.state = 'running' AND a.lease_until < :now;

-- name: lose_attempt
UPDATE attempts SET state = 'lost', ended_at = :now, reason = :reason
WHERE id = :attempt_id AND state = 'running';

-- name: requeue_lost
UPDATE jobs
SET state = 'queued', lost_count = lost_count + 1, current_attempt = NULL, updated_at = :now,
    reason = :reason
WHERE id = :job_id AND state = 'running' AND current_attempt = :attempt_id;

-- name: end_lost
UPDATE jobs
SET state = :state, lost_count = lost_count + :lost_inc, current_attempt = NULL,
    updated_at = :now, reason = :reason
WHERE id = :job_id AND state = 'running' AND current_attempt = :attempt_id;

-- name: silent_agents
SELECT id FROM agents WHERE state != 'gone' AND last_seen < :deadline;

-- name: next_due
SELECT min(not_before) FROM jobs WHERE state = 'queued' AND not_before > :now;

-- name: any_claimable
SELECT 1 FROM jobs WHERE state = 'queued' AND not_before <= :now LIMIT 1;

-- name: insert_token
INSERT INTO tokens (id, secret_sha256, role, name, pool, created_at, expires_at)
VALUES (:id, :secret_sha256, :role, :name, :pool, :now, :expires_at);

-- name: select_token
SELECT id, role, name, pool, created_at, expires_at, revoked, used_at, secret_sha256
FROM tokens WHERE id = :id;

-- name: select_tokens
SELECT id, role, name, pool, created_at, expires_at, revoked, used_at, secret_sha256
FROM tokens ORDER BY created_at;

-- name: revoke_token
UPDATE tokens SET revoked = 1 WHERE id = :id AND revoked = 0;

-- name: use_bootstrap
UPDATE tokens SET used_at = :now
WHERE id = :id AND role = 'bootstrap' AND used_at IS NULL AND revoked = 0
  AND (expires_at IS NULL OR expires_at > :now);

-- name: attempt_running_of_agent
SELECT id FROM attempts WHERE id = :attempt_id AND agent_id = :agent_id AND state = 'running';

-- name: select_log_tail
SELECT start_offset, data FROM log_tails WHERE attempt_id = :attempt_id AND stream = :stream;

-- name: upsert_log_tail
INSERT INTO log_tails (attempt_id, stream, start_offset, data, updated_at)
VALUES (:attempt_id, :stream, :start_offset, :data, :now)
ON CONFLICT (attempt_id, stream) DO UPDATE
SET start_offset = excluded.start_offset, data = excluded.data, updated_at = excluded.updated_at;

-- name: log_tail_of_job
SELECT l.attempt_id, l.start_offset, l.data
FROM jobs j JOIN log_tails l ON l.attempt_id = j.current_attempt AND l.stream = :stream
WHERE j.id = :job_id;

-- name: delete_log_tails_of_attempts
DELETE FROM log_tails WHERE attempt_id IN ({ids});

-- name: delete_log_tails_of_job
DELETE FROM log_tails WHERE attempt_id IN (SELECT id FROM attempts WHERE job_id = :job_id);

-- name: link_instance
UPDATE instances SET agent_id = :agent_id, state = 'running', ready_at = :now,
    launched_at = coalesce(launched_at, :now), reason = 'its agent joined'
WHERE id = :instance_id AND state IN ('requested', 'booting');

-- name: insert_instance
INSERT INTO instances (pool, provider, state, cost_per_hour, created_at, reason)
VALUES (:pool, :provider, 'requested', :cost_per_hour, :now, :reason);

-- name: set_instance
UPDATE instances SET state = :state, reason = :reason,
    provider_id = coalesce(:provider_id, provider_id),
    launched_at = CASE WHEN :state IN ('booting', 'running') AND launched_at IS NULL THEN :now
                       ELSE launched_at END,
    ended_at = CASE WHEN :state IN ('terminated', 'failed') THEN :now ELSE ended_at END
WHERE id = :instance_id AND state IN ({expect});

-- name: select_instances
SELECT id, pool, provider, provider_id, state, cost_per_hour, created_at, launched_at, ready_at,
       ended_at, agent_id, reason
FROM instances {where} ORDER BY id;

-- name: queued_demand
SELECT cpus, memory_bytes, gpus, requires, priority, count(*)
FROM jobs WHERE state = 'queued' AND not_before <= :now
GROUP BY cpus, memory_bytes, gpus, requires, priority;

-- name: agent_load
SELECT a.agent_id, sum(j.cpus), sum(j.memory_bytes), sum(j.gpus), count(*)
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.state = 'running'
GROUP BY a.agent_id;

-- name: expire_leases_of_agent
UPDATE attempts SET lease_until = 0 WHERE agent_id = :agent_id AND state = 'running';

-- name: agent_gone_now
UPDATE agents SET state = 'gone', drain = 1 WHERE id = :agent_id AND state != 'gone';

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value, updated_at) VALUES (:key, :value, :now)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: set_sample
INSERT INTO series (metric, step_s, bucket, value) VALUES (:metric, :step_s, :bucket, :value)
ON CONFLICT (metric, step_s, bucket) DO UPDATE SET value = excluded.value;

-- name: add_sample
INSERT INTO series (metric, step_s, bucket, value) VALUES (:metric, :step_s, :bucket, :value)
ON CONFLICT (metric, step_s, bucket) DO UPDATE SET value = series.value + excluded.value;

-- name: series_window
SELECT metric, value FROM series WHERE step_s = :step_s AND bucket >= :start AND bucket < :end;

-- name: prune_series
DELETE FROM series WHERE step_s = :step_s AND bucket < :before;

-- name: select_series
SELECT bucket, value FROM series
WHERE metric = :metric AND step_s = :step_s AND bucket > :since AND bucket <= :until
ORDER BY bucket;

-- name: series_metrics
SELECT DISTINCT metric FROM series
WHERE step_s = :step_s AND bucket > :since AND bucket <= :until;

-- name: newest_event
SELECT coalesce(max(id), 0) FROM events;

-- name: count_finished
SELECT coalesce(sum(CASE WHEN to_state IN ('succeeded', 'failed', 'timed_out', 'cancelled')
                         THEN 1 ELSE 0 END), 0),
       coalesce(max(id), :after_id)
FROM events WHERE id > :after_id;

-- name: enable_outlet
-- Event outlets: the outbox is filled by the trigger events_outbox (migration 0005).
INSERT INTO outlets (name, enabled, updated_at) VALUES (:name, 1, :now)
ON CONFLICT (name) DO UPDATE SET enabled = 1, updated_at = excluded.updated_at
WHERE outlets.enabled = 0;

-- name: disable_outlet
UPDATE outlets SET enabled = 0, updated_at = :now WHERE name = :name;

-- name: drop_deliveries
DELETE FROM outbox WHERE outlet = :outlet;

-- name: take_deliveries
SELECT o.event_id, o.attempts, o.next_try, o.error,
       e.ts, e.job_id, e.attempt_id, e.agent_id, e.kind, e.from_state, e.to_state, e.detail
FROM outbox o JOIN events e ON e.id = o.event_id
WHERE o.outlet = :outlet ORDER BY o.event_id LIMIT :limit;

-- name: delete_deliveries
DELETE FROM outbox WHERE outlet = :outlet AND event_id IN ({ids});

-- name: delivery_failed
UPDATE outbox SET attempts = attempts + 1, next_try = :next_try, error = :error
WHERE outlet = :outlet AND event_id = :event_id;

-- name: select_outlets
SELECT l.name, l.enabled, l.updated_at, count(o.event_id)
FROM outlets l LEFT JOIN outbox o ON o.outlet = l.name
GROUP BY l.name, l.enabled, l.updated_at ORDER BY l.name;
