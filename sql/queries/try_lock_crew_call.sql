-- As lock_crew_call.sql, but false at once when another transaction holds the lock.
SELECT pg_try_advisory_xact_lock(x'464C5853'::integer, hashtext($1::uuid::text || '/' || $2))
