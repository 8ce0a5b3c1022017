-- Who may call (flex_sync_private.authorize() raises 42501 itself), then, for a call with a job
-- ($1 true), which application table is missing. Run before call_context.sql is first prepared
-- in a backend (and by calls that never get that far: one without a job, the drift check), so
-- that a missing table is named with a hint, not by the parser.
SELECT json_build_object(
    'authorized', flex_sync_private.authorize() IS NOT NULL,
    'missing', CASE WHEN $1 THEN (SELECT 'public.' || t
                                  FROM unnest(ARRAY['jobs', 'profiles', 'job_assignments', 'flex_crew_calls', 'flex_crew_assignments']) t
                                  WHERE to_regclass('public.' || t) IS NULL
                                  LIMIT 1) END)::text
