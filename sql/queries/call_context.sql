-- What a flex_sync_job call checks its input against and runs with, in one statement. $1 the job.
-- departments: the job's crew calls' departments (trimmed, lower-cased, sorted).
-- elements: each of those departments' Flex element (read before the lock: the sync lists it as
-- soon as the lock is held, and lists again if the crew call read under the lock names another).
-- caller: the role PostgREST set (SET LOCAL ROLE) and the JWT subject.
-- time_left_ms: what is left of statement_timeout, NULL without one.
-- rate_limited: whether a recent sync found Flex's hourly budget spent.
-- settings: base_url, api_token (from Vault or the store) and options; NULL when flex_sync is not
-- configured (the call refuses that only once its input has passed every check). Read here, for
-- a caller authorize() let through, before the input's checks: a call they refuse has read the
-- token too (it never leaves the backend), and a Vault that fails fails the call first.
-- Every part costs the same whatever $1 is, so the plan cache keeps one generic plan instead of
-- planning the statement again on every call.
SELECT json_build_object(
    'isolation', current_setting('transaction_isolation'),
    'job_exists', EXISTS (SELECT 1 FROM public.jobs WHERE id = $1::uuid),
    'departments', crew_calls.departments,
    'elements', crew_calls.elements,
    'caller', coalesce(nullif(current_setting('role'), 'none'), session_user::text)
              || coalesce(' sub=' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), ''),
    'time_left_ms', CASE WHEN current_setting('statement_timeout') IN ('0', '0ms') THEN NULL
                    ELSE (extract(epoch FROM current_setting('statement_timeout')::interval) * 1000
                          - extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint
                    END,
    'rate_limited', coalesce((SELECT f.rate_limited_until > now() FROM flex_sync_private.flex_state f), false),
    'settings', (SELECT row_to_json(s) FROM flex_sync_private.effective_settings() s WHERE s.base_url IS NOT NULL))::text
FROM (SELECT coalesce(json_agg(DISTINCT lower(btrim(c.department)) ORDER BY lower(btrim(c.department))), '[]') AS departments,
             coalesce(json_object_agg(lower(btrim(c.department)), c.flex_element_id)
                      FILTER (WHERE c.flex_element_id IS NOT NULL), '{}') AS elements
      FROM public.flex_crew_calls c WHERE c.job_id = $1::uuid) crew_calls
