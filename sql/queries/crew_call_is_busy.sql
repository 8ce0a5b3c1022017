-- Whether some backend holds the crew call's advisory lock (the key of lock_crew_call.sql), read
-- from pg_locks without taking it. $1 job, $2 department.
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
      AND l.classid::bigint = (x'464C5853'::integer)::bigint & 4294967295
      AND l.objid::bigint = hashtext($1::uuid::text || '/' || $2)::bigint & 4294967295)
