-- stamp_allocate_positions (0003, 0010), unchanged in what it does, planned once per
-- connection instead of on every call.
--
-- PL/pgSQL keeps its statements' plans, but PostgreSQL's plan cache compares the
-- generic plan's estimate with the custom plans': the generic one guesses ten
-- elements for each `unnest` of an array argument, a custom one sees the one or two
-- an allocation has, so the custom plan always looked cheaper and the statement was
-- planned again on every call — half of an allocation's CPU in PostgreSQL (0.69 →
-- 0.35 ms per call measured; planning was 14 % of PostgreSQL's CPU in a load test;
-- docs/benchmarks.md).
--
-- The one plan is made on a connection's first call and kept while the table grows,
-- so it must not depend on the table's size then: made on a new installation's empty
-- table, a generic plan found the rows to update with a sequential scan, and kept
-- doing so over thousands of rows (6 ms of PostgreSQL CPU per certificate instead of
-- 2.4). Every row the function touches is found by primary key (0010), which
-- `enable_seqscan = off` leaves as the only way the planner considers; both settings
-- hold inside the function only.
ALTER FUNCTION stamp_allocate_positions(uuid, text[], uuid[], integer[], text, double precision)
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off;
