-- Before anything else in a flex_sync_job call: who may call (flex_sync_private.authorize()
-- raises 42501 itself), which application table is missing, and whether flex_crew_assignments has
-- the unique index ON CONFLICT needs (pair_unique_index() raises 42P16 for a deferrable one). It
-- names no application table, so it runs whatever is missing.
SELECT jsonb_build_object(
    'authorized', (SELECT true FROM flex_sync_private.authorize()),
    'missing', (SELECT 'public.' || t
                FROM unnest(ARRAY['jobs', 'profiles', 'job_assignments', 'flex_crew_calls', 'flex_crew_assignments']) t
                WHERE to_regclass('public.' || t) IS NULL LIMIT 1),
    'unique', flex_sync_private.pair_unique_index() IS NOT NULL)
