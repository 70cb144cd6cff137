-- 0002: access tokens (hashed secrets, roles, pools, single-use bootstrap tokens).
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
