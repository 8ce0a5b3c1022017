-- The crew calls a drift check lists next: never checked first, then the least recently
-- checked. $1 how many.
SELECT coalesce(jsonb_agg(jsonb_build_object('job_id', q.job_id, 'department', q.department) ORDER BY q.n), '[]')
FROM (
    SELECT c.job_id, lower(btrim(c.department)) AS department,
           row_number() OVER (ORDER BY d.checked_at NULLS FIRST, c.id) AS n
    FROM public.flex_crew_calls c
    LEFT JOIN flex_sync_private.drift_checks d ON d.crew_call_id = c.id
    ORDER BY d.checked_at NULLS FIRST, c.id
    LIMIT $1
) q
