-- Before anything else in a flex_sync_job call: which application table is missing, then who may
-- call (flex_sync_private.authorize() raises 42501 itself) and whether flex_crew_assignments has
-- the unique index ON CONFLICT needs (pair_unique_index() raises 42P16 for a deferrable one).
-- Both rules read application tables, so neither runs while one is missing.
WITH missing AS (
    SELECT 'public.' || t AS name
    FROM unnest(ARRAY['jobs', 'profiles', 'job_assignments', 'flex_crew_calls', 'flex_crew_assignments']) t
    WHERE to_regclass('public.' || t) IS NULL
    LIMIT 1
)
SELECT jsonb_build_object(
    'missing', (SELECT name FROM missing),
    'authorized', CASE WHEN NOT EXISTS (SELECT 1 FROM missing) THEN (SELECT true FROM flex_sync_private.authorize()) END,
    'unique', CASE WHEN NOT EXISTS (SELECT 1 FROM missing) THEN flex_sync_private.pair_unique_index() IS NOT NULL END)
