-- The drift records of crew calls the application has deleted go, at the start of a check.
DELETE FROM flex_sync_private.drift_checks d
WHERE NOT EXISTS (SELECT 1 FROM public.flex_crew_calls c WHERE c.id = d.crew_call_id)
