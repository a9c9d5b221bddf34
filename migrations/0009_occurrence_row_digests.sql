-- A digest of each occurrence row as the scheduler last wrote it, so that a
-- round rewrites only the rows that changed (a practice completing one
-- occurrence rewrites that one, not the participant's whole schedule).
-- NULL: not known, rewritten at the next change. Like the digest of the
-- stream's rows, it is only ever compared with digests the same build
-- made; another build rewrites each row once.
ALTER TABLE scheduler_occurrences ADD COLUMN row_digest bigint;
