-- The dead-letter table (scorebeater.storage.quarantine): records a stage set aside instead of
-- retrying them forever, for an operator to retry or skip. Columns mirror QUARANTINE_SCHEMA
-- (binary -> bytea); `id` is derived from (kind, key) by the code, the same on every backend.
CREATE TABLE quarantine (
    id              int8        NOT NULL,
    kind            text        NOT NULL,
    key             text        NOT NULL,
    season          int4        NOT NULL,
    reason          text        NOT NULL,
    detail          text        NOT NULL,
    payload         bytea       NOT NULL,
    truncated       bool        NOT NULL,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    attempts        int4        NOT NULL CHECK (attempts >= 1),
    state           text        NOT NULL CHECK (state IN ('open', 'retry', 'skipped', 'resolved')),
    PRIMARY KEY (id),
    UNIQUE (kind, key)
);

-- The features stage asks for one season's entries on every run; operators filter by state.
CREATE INDEX quarantine_season_state ON quarantine (season, state);
