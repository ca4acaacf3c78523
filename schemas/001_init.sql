-- 001_init.sql: the first nightshift queue schema (PRAGMA user_version = 1).
-- Never edit a migration once it has been released: add 002_*.sql instead (see
-- schemas/README.md). jobs/store.c embeds this exact text; test_store_schema_file_matches
-- checks that the two agree.

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    spec_path   TEXT,
    spec_text   TEXT,
    fingerprint TEXT,
    model_path  TEXT,
    priority    INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    zstd_level  INTEGER NOT NULL DEFAULT 3,
    created_at  REAL NOT NULL,
    finished_at REAL
);

CREATE TABLE items (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,
    custom_id     TEXT NOT NULL,
    prompt_tokens BLOB NOT NULL,
    n_prompt      INTEGER NOT NULL CHECK (n_prompt >= 0),
    sampling_json TEXT,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_expires REAL,
    error         TEXT,
    updated_at    REAL NOT NULL,
    UNIQUE (job_id, custom_id),
    UNIQUE (job_id, idx)
);

-- claim: a job's pending items, shortest prompt first, then input order.
CREATE INDEX items_claim ON items (job_id, status, n_prompt, idx);
-- leases: expiry scans and renew/release by owner touch only running items.
CREATE INDEX items_lease_expires ON items (lease_expires) WHERE status = 'running';
CREATE INDEX items_lease_owner ON items (lease_owner) WHERE status = 'running';
-- export walks the index of UNIQUE (job_id, idx); it needs no index of its own.

CREATE TABLE results (
    item_id           INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
    body              BLOB NOT NULL,
    raw_bytes         INTEGER NOT NULL CHECK (raw_bytes >= 0),
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason     TEXT,
    seconds           REAL NOT NULL,
    created_at        REAL NOT NULL
);
