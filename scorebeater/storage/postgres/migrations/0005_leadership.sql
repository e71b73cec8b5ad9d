-- Leader election of `scorebeater run` replicas (scorebeater.leadership.postgres): one row, the
-- current leadership term. A new leader bumps `term` in the transaction that follows winning the
-- session advisory lock and uses it as its fencing token; every write transaction reads
-- this row FOR SHARE last, just before COMMIT, and is rejected when its token is older: a bump
-- waits for a commit that passed the check, and no write of an older term commits after it.
-- `nonce` is the leader's own random id, written with the term: a write must match both, so a
-- term number reused after a database failover that lost the bump (asynchronous replication)
-- cannot let two leaders pass. Write transactions run with the nonce as their
-- application_name, so a new leader can end an old leader's stuck transaction.
CREATE TABLE leadership (
    id          int2        NOT NULL DEFAULT 1 CHECK (id = 1),
    term        int8        NOT NULL CHECK (term >= 0),
    holder      text        NOT NULL,
    pid         int4        NOT NULL,
    host        text        NOT NULL,
    nonce       text        NOT NULL DEFAULT '',
    acquired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
);
INSERT INTO leadership (id, term, holder, pid, host) VALUES (1, 0, '', 0, '');
