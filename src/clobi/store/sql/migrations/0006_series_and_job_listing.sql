-- 0006: the dashboard: time series for its charts (RRD-like archives, see store/sqlseries.py)
-- and indexes for its job listings.
CREATE TABLE series (
    metric TEXT NOT NULL,
    step_s INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (metric, step_s, bucket)
) WITHOUT ROWID;

-- Pruning drops an archive's oldest points, whatever their metric.
CREATE INDEX series_age ON series (step_s, bucket);

-- The dashboard's job listings: a user's own jobs newest first, and jobs by priority, walk
-- these instead of sorting the table. Neither column changes after submit, so claims and
-- reports never touch them; submits pay for them.
CREATE INDEX jobs_owner ON jobs (owner, id);

CREATE INDEX jobs_priority ON jobs (priority, id);
