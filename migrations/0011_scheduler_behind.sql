-- The streams the scheduler has yet to process sit in a table of their own.
-- They used to be found through a partial index on scheduler_streams whose
-- predicate compared its version columns: then every mark and every round
-- changed an indexed column, and each of the two updates a logged practice
-- causes was a new row version with an entry in every index of the table.
-- Now neither touches an indexed column (next_at aside, when it moves), so
-- PostgreSQL updates the row in place on its page (a HOT update), and room
-- is left on each page for that.
CREATE TABLE scheduler_behind (
    tenant_id text NOT NULL,
    stream_id text NOT NULL,
    PRIMARY KEY (tenant_id, stream_id)
);
INSERT INTO scheduler_behind (tenant_id, stream_id)
    SELECT tenant_id, stream_id FROM scheduler_streams
    WHERE seen_version > processed_version
       OR practice_seen_version > practice_processed_version;
DROP INDEX scheduler_streams_behind;
ALTER TABLE scheduler_streams SET (fillfactor = 80);
-- Occurrence rows change in place too (a completion, a due or missed
-- event): the same room lets those updates stay on their page.
ALTER TABLE scheduler_occurrences SET (fillfactor = 80);
