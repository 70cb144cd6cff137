-- 0003: the newest bytes of running attempts' stdout/stderr, pushed by agents for followers.
CREATE TABLE log_tails (
    attempt_id bigint NOT NULL,
    stream text NOT NULL,
    start_offset bigint NOT NULL,
    data bytea NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (attempt_id, stream)
);
