-- Before anything else in a flex_sync_job call, in this order: who may call
-- (flex_sync_private.authorize() raises 42501 itself); then, for a call with a job ($1 true),
-- which application table is missing, and, with none missing, whether flex_crew_assignments has
-- the unique index ON CONFLICT needs: true when it has and none of them is deferrable, NULL when
-- it has none. With a deferrable one, pair_unique_index() raises 42P16 (it is called only then).
WITH missing AS (
    SELECT 'public.' || t AS name
    FROM unnest(ARRAY['jobs', 'profiles', 'job_assignments', 'flex_crew_calls', 'flex_crew_assignments']) t
    WHERE to_regclass('public.' || t) IS NULL
    LIMIT 1
), pair AS (
    SELECT bool_and(u.immediate) AS immediate FROM flex_sync_private.pair_unique_indexes() u
)
SELECT json_build_object(
    'authorized', flex_sync_private.authorize() IS NOT NULL,
    'missing', CASE WHEN $1 THEN (SELECT name FROM missing) END,
    'unique', CASE WHEN $1 AND NOT EXISTS (SELECT 1 FROM missing)
                   THEN (SELECT CASE WHEN NOT p.immediate THEN flex_sync_private.pair_unique_index() IS NOT NULL
                                     ELSE p.immediate END
                         FROM pair p)
              END)::text
