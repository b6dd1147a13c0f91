-- Portable between SQLite and PostgreSQL: TEXT ids, BIGINT for every
-- integer (timestamps are milliseconds since the epoch, booleans 0/1),
-- JSON kept as TEXT.
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    team_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    image TEXT NOT NULL,
    cpus BIGINT,
    memory_mib BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id),
    template_id TEXT NOT NULL,
    state TEXT NOT NULL,
    cpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    env TEXT NOT NULL,
    auto_pause BIGINT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    stopped_at BIGINT,
    stop_reason TEXT,
    host TEXT NOT NULL
);
CREATE INDEX sandboxes_team_state ON sandboxes (team_id, state);
CREATE INDEX sandboxes_state_expiry ON sandboxes (state, expires_at);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    sandbox_id TEXT,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_team_at ON events (team_id, at);
CREATE INDEX events_sandbox ON events (sandbox_id);
