-- The rule of 0004, unchanged — no two live certificates of one metering point with
-- overlapping periods — checked through a cheaper GiST index.
--
-- Keeping that index up to date was most of an intake insert's time in PostgreSQL
-- (about 60 of 90 ms for 1,000 certificates; docs/benchmarks.md): a GiST insert
-- chooses its subtree by a penalty computed for each entry of each page it passes,
-- column by column, and btree_gist's penalty on text keys is expensive. With a
-- leading 64-bit hash of the metering point that choice is mostly an integer
-- comparison (measured: the whole insert 40 % faster). The metering point itself
-- stays in the constraint, so two metering points whose hashes collide never
-- conflict.
-- Equal metering points have equal hashes, so the constraint refuses exactly what
-- 0004's did: no stored row can violate it and no period is freed by the change.
--
-- hashtextextended is IMMUTABLE (PostgreSQL's hash partitioning relies on it), as an
-- index expression must be. Lookups that want this index use the same expression
-- (stamp/db/withdrawals.py, stamp/db/batch_intake.py). The name stays, so a
-- violation still names certificates_metering_period_excl.
ALTER TABLE certificates
    DROP CONSTRAINT certificates_metering_period_excl,
    ADD CONSTRAINT certificates_metering_period_excl
        EXCLUDE USING gist (
            hashtextextended(metering_point_id, 0) WITH =,
            metering_point_id WITH =,
            int8range(period_start, period_end, '[)') WITH &&)
        WHERE (NOT withdrawn);
