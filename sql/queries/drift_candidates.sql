-- The crew calls a drift check lists next, in the order of the overridable rule
-- flex_sync_private.crew_calls_to_check(). $1 how many.
SELECT coalesce(json_agg(json_build_object('job_id', q.job_id, 'department', q.department) ORDER BY q.n), '[]')::text
FROM flex_sync_private.crew_calls_to_check($1) WITH ORDINALITY AS q(job_id, department, n)
