-- 0006: the dashboard: time series for its charts (RRD-like archives, see store/sqlseries.py)
-- and indexes for its job listings.
CREATE TABLE series (
    metric text NOT NULL,
    step_s integer NOT NULL,
    bucket bigint NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (metric, step_s, bucket)
);

-- Pruning drops an archive's oldest points, whatever their metric.
CREATE INDEX series_age ON series (step_s, bucket);

-- The dashboard's job listings: a user's own jobs newest first, and jobs by priority, walk
-- these instead of sorting the table. Submits pay for them, and so does every change of a
-- job: its state is indexed, so no update of jobs is HOT and each adds an entry to all of
-- the table's indexes.
CREATE INDEX jobs_owner ON jobs (owner, id);

CREATE INDEX jobs_priority ON jobs (priority, id);
