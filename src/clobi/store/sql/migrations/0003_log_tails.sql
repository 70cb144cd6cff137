-- 0003: the newest bytes of running attempts' stdout/stderr, pushed by agents for followers.
CREATE TABLE log_tails (
    attempt_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (attempt_id, stream)
);
