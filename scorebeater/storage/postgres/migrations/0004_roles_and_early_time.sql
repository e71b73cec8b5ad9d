-- Prediction and outcome schema version 2 (scorebeater.storage.base):
-- 1. predictions.role: "champion" (the served version) or "challenger" (the shadow one). The
--    rows stored before are the champion's. A constant default is stored in the catalogue, so
--    adding the column rewrites nothing, however large the table; it stays the default for
--    nothing but those rows (every write names the column).
-- 2. outcomes.resolved_early_seq/resolved_early_at: when the player was known to have beaten
--    his mark. Nullable: a final row of a player never resolved early has none, and a final row
--    stored before this version lost it (the final row overwrote the early one). An early row
--    stored before has them equal to its resolved_*, as every early row written from now on.
ALTER TABLE predictions
    ADD COLUMN role text NOT NULL DEFAULT 'champion' CHECK (role IN ('champion', 'challenger'));

ALTER TABLE outcomes
    ADD COLUMN resolved_early_seq int4,
    ADD COLUMN resolved_early_at  timestamptz;

UPDATE outcomes SET resolved_early_seq = resolved_seq, resolved_early_at = resolved_at
    WHERE resolution = 'early';
