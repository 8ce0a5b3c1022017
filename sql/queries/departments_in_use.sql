-- Which of the names asked for ($1, trimmed and lower-cased) some crew call uses as its
-- department: run only for names that are neither standard nor the job's own.
SELECT coalesce(json_agg(DISTINCT d), '[]')::text
FROM unnest($1::text[]) d
WHERE EXISTS (SELECT 1 FROM public.flex_crew_calls c WHERE lower(btrim(c.department)) = d)
