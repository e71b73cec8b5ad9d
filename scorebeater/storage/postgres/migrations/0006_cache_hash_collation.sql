-- Feature hashes are hex digests: their byte order is the only order they need. Under the
-- database's default collation (en_US.UTF-8, C.UTF-8, ...) every comparison in the cache's
-- primary key index goes through strcoll and sorts get no abbreviated keys; "C" compares bytes.
-- Measured on the refeed's cache inserts (200,000 entries in hash order): 0.40-0.55 s -> 0.28 s.
-- Equality, and so what the cache answers, is the same under both collations. Rewrites the
-- table and its index once (the cache can be cleared first to make this instant).
ALTER TABLE prediction_cache ALTER COLUMN feature_hash TYPE text COLLATE "C";
