-- The crew call's advisory lock for the rest of the transaction, waiting for it. The key is
-- flex_sync_private.item_lock()'s (the queue's), spelled out so that a library newer than the
-- installed SQL works until ALTER EXTENSION flex_sync UPDATE. $1 job, $2 department.
SELECT pg_advisory_xact_lock(x'464C5853'::integer, hashtext($1::uuid::text || '/' || $2)) IS NOT NULL
