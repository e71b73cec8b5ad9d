-- Feature schema version 2 (scorebeater.storage.base.ADDED_INPUTS): four more model inputs.
-- Nullable: the rows stored before this version have no value for them and read back with
-- nulls; every row written from now on has them (storage.base.conform_features checks it).
-- Adding a nullable column without a default rewrites nothing, however large the table.
ALTER TABLE features
    ADD COLUMN prev_season_games float4,
    ADD COLUMN prev_games_missed float4,
    ADD COLUMN prev3_ftm         float4,
    ADD COLUMN prev3_games       float4;
