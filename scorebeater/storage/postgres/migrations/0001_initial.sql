-- The first version of the store. Runs with search_path set to the configured schema, inside
-- the migration transaction (scorebeater.storage.postgres), so names here are unqualified.
-- Column names, order and types mirror the Arrow schemas in scorebeater/storage/base.py:
-- int64 -> int8, int32 -> int4, float32 -> float4, float64 -> float8, bool -> bool,
-- string -> text, timestamp[us, UTC] -> timestamptz. A test checks they stay in step.

-- Feature history: one row per player, season and as-of game number.
CREATE TABLE features (
    player_id       int8        NOT NULL,
    season          int4        NOT NULL,
    as_of_seq       int4        NOT NULL,
    as_of_game_id   text        NOT NULL,
    as_of_time      timestamptz NOT NULL,
    player          text        NOT NULL,
    team            text        NOT NULL,
    prev_ftm        float4      NOT NULL,
    prev_fta        float4      NOT NULL,
    prev_games      float4      NOT NULL,
    prev_minutes    float4      NOT NULL,
    prev2_ftm       float4      NOT NULL,
    prev2_games     float4      NOT NULL,
    experience      float4      NOT NULL,
    age             float4      NOT NULL,
    ftm             float4      NOT NULL,
    fta             float4      NOT NULL,
    games_with_fta  float4      NOT NULL,
    team_games      float4      NOT NULL,
    season_games    float4      NOT NULL,
    feature_hash    text        NOT NULL,
    PRIMARY KEY (player_id, season, as_of_seq)
);

-- Which as-of row is each player-season's latest, maintained in the same transaction as the
-- feature writes. A pointer table keeps the bulk COPY into `features` free of a second index
-- and makes "latest for a season" an index range scan instead of a DISTINCT ON over history.
CREATE TABLE latest_features (
    season          int4        NOT NULL,
    player_id       int8        NOT NULL,
    as_of_seq       int4        NOT NULL,
    PRIMARY KEY (season, player_id)
);

CREATE TABLE predictions (
    player_id       int8        NOT NULL,
    season          int4        NOT NULL,
    as_of_seq       int4        NOT NULL,
    as_of_time      timestamptz NOT NULL,
    model_version   int8        NOT NULL,
    probability     float8      NOT NULL,
    feature_hash    text        NOT NULL,
    progress        float4      NOT NULL,
    predicted_at    timestamptz NOT NULL,
    PRIMARY KEY (player_id, season, as_of_seq, model_version)
);

-- Lookups are always for one model version and many hashes: version first in the key.
CREATE TABLE prediction_cache (
    feature_hash    text        NOT NULL,
    model_version   int8        NOT NULL,
    probability     float8      NOT NULL,
    PRIMARY KEY (model_version, feature_hash)
);

CREATE TABLE outcomes (
    player_id       int8        NOT NULL,
    season          int4        NOT NULL,
    beat            bool        NOT NULL,
    resolution      text        NOT NULL CHECK (resolution IN ('early', 'final')),
    resolved_seq    int4        NOT NULL,
    resolved_at     timestamptz NOT NULL,
    ftm             int4        NOT NULL,
    prev_ftm        int4        NOT NULL,
    PRIMARY KEY (player_id, season)
);

CREATE TABLE checkpoints (
    name            text        PRIMARY KEY CHECK (name ~ '^[a-z0-9_.-]{1,64}$'),
    value           bytea       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
