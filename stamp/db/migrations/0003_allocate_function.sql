-- Position allocation as one function, so that a batch of recipients' allocations
-- can be written in one pipelined round trip (stamp/db/batcher.py) instead of a
-- transaction of four per recipient.
--
-- The recipient row is locked by a statement of its own before the allocation runs:
-- under READ COMMITTED each statement of a VOLATILE function takes a fresh snapshot,
-- so the allocation sees every position a concurrent allocator (another process)
-- has just handed out, and neither skips nor overwrites one. Each certificate still
-- without a position and at its expected version gets the next number in request
-- order; the counter advances by exactly the number handed out (no gaps). The lock
-- is FOR NO KEY UPDATE (what the counter's own UPDATE takes): it serialises
-- allocators but not intake, whose foreign-key check only takes KEY SHARE.

CREATE FUNCTION stamp_allocate_positions(
    p_recipient uuid,
    p_registries text[],
    p_ids uuid[],
    p_versions integer[],
    p_lease_owner text,
    p_lease_seconds double precision
) RETURNS TABLE (out_registry text, out_id text, out_position bigint, out_version integer)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM recipients WHERE id = p_recipient FOR NO KEY UPDATE;
    RETURN QUERY
    WITH recipient AS (
        -- Already locked above; this statement's fresh snapshot sees the latest counter.
        SELECT r.id, r.next_position FROM recipients r WHERE r.id = p_recipient
    ),
    wanted AS (
        SELECT w.registry_name, w.id, w.version, w.ord
        FROM unnest(p_registries, p_ids, p_versions) WITH ORDINALITY AS w(registry_name, id, version, ord)
    ),
    eligible AS (
        SELECT c.registry_name, c.id, row_number() OVER (ORDER BY wanted.ord) - 1 AS offset_
        FROM wanted
        JOIN certificates c
          ON c.registry_name = wanted.registry_name AND c.id = wanted.id
         AND c.version = wanted.version AND c.position IS NULL AND c.state = 'stored'
         AND c.recipient_id = p_recipient
    ),
    assigned AS (
        UPDATE certificates c
        SET position = recipient.next_position + eligible.offset_,
            version = c.version + 1,
            lease_owner = p_lease_owner,
            lease_until = now() + make_interval(secs => p_lease_seconds),
            updated_at = now()
        FROM eligible, recipient
        WHERE c.registry_name = eligible.registry_name AND c.id = eligible.id AND c.position IS NULL
        RETURNING c.registry_name, c.id::text, c.position, c.version
    ),
    advanced AS (
        UPDATE recipients r SET next_position = r.next_position + (SELECT count(*) FROM assigned)
        WHERE r.id = p_recipient
        RETURNING r.next_position
    )
    SELECT assigned.registry_name, assigned.id, assigned.position, assigned.version
    FROM assigned, advanced;
END
$$;
