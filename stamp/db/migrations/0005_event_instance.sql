-- Which Stamp instance wrote each event: the certificate's history then shows who
-- drove it, and that two instances never drove it at once (a lease is taken over
-- only after it expired). NULL for events written outside a lease (operator actions,
-- intake that left the certificate to the backlog) and for rows from before.

ALTER TABLE certificate_events ADD COLUMN instance_id text;
