-- stamp_allocate_positions (0003), unchanged in what it does, with one change in how
-- it finds the certificates it was asked for: by primary key, one probe each.
--
-- 0003 joined the requested keys to `certificates` with all the conditions in one
-- join, and left the planner to pick the index. With the statistics a busy table
-- has (analysed when most certificates were finished, then a burst leaves thousands
-- stored) and the generic plan PostgreSQL keeps for a function's statement after a
-- few calls, it picked the state or backlog index instead: a bitmap of every stored
-- certificate ANDed with the recipient's, 4–9 ms per allocation during a burst of
-- 1,000 arrivals/s (docs/benchmarks.md), growing with the backlog. Here the lookup is
-- a LATERAL subquery on the key columns alone; OFFSET 0 keeps the planner from
-- pulling it up or pushing the other conditions into it (which would bring the
-- other indexes back into play). The conditions are applied to the row found.
CREATE OR REPLACE FUNCTION stamp_allocate_positions(
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
        CROSS JOIN LATERAL (
            SELECT k.registry_name, k.id, k.version, k.position, k.state, k.recipient_id
            FROM certificates k
            WHERE k.registry_name = wanted.registry_name AND k.id = wanted.id
            OFFSET 0
        ) c
        WHERE c.version = wanted.version AND c.position IS NULL AND c.state = 'stored'
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
