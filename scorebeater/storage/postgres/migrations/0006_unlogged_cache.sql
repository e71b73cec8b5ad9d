-- The prediction cache is derived data: a lost entry costs one model call, never a wrong
-- answer. So it is UNLOGGED: its writes skip the write-ahead log (a cold refeed writes an entry
-- per player, 1M rows being ~200 MB of WAL and the checkpoints they trigger), and after a
-- server crash Postgres empties it (the next runs refill it). Physical replicas do not carry it:
-- a promoted replica starts with an empty cache, which is correct, only slower at first.
-- Feature hashes are hex digests: their byte order is the only order they need. Under the
-- database's default collation (en_US.UTF-8, C.UTF-8, ...) every comparison in the cache's
-- primary key index goes through strcoll and sorts get no abbreviated keys; "C" compares bytes.
-- Equality, and so what the cache answers, is the same under both collations.
-- Both rewrite the table and its index once (clearing the cache first makes this instant).
ALTER TABLE prediction_cache SET UNLOGGED;
ALTER TABLE prediction_cache ALTER COLUMN feature_hash TYPE text COLLATE "C";
