-- Everything a flex_sync_job call checks before its first Flex request, and what it runs with, in
-- one statement, in this order. $1 the job.
-- authorized: who may call (flex_sync_private.authorize() raises 42501 itself).
-- unique: whether flex_crew_assignments has the unique index ON CONFLICT needs: true when it has
-- and none of them is deferrable, NULL when it has none; with a deferrable one,
-- pair_unique_index() raises 42P16 (it is called only then).
-- isolation, job_exists; departments: the job's crew calls' departments (trimmed, lower-cased,
-- sorted); caller: the role PostgREST set (SET LOCAL ROLE) and the JWT subject; time_left_ms:
-- what is left of statement_timeout, NULL without one; rate_limited: whether a recent sync found
-- Flex's hourly budget spent.
-- settings: base_url, api_token (from Vault or the store) and options; NULL when flex_sync is not
-- configured (the call refuses that only once its input has passed every check). Read here, for
-- a caller authorize() let through, before the input's checks: a call they refuse has read the
-- token too (it never leaves the backend), and a Vault that fails fails the call first.
-- Every part costs the same whatever $1 is, so the plan cache keeps one generic plan instead of
-- planning the statement again on every call.
SELECT json_build_object(
    'authorized', flex_sync_private.authorize() IS NOT NULL,
    'unique', (SELECT CASE WHEN NOT p.immediate THEN flex_sync_private.pair_unique_index() IS NOT NULL ELSE p.immediate END
               FROM (SELECT bool_and(u.immediate) AS immediate FROM flex_sync_private.pair_unique_indexes() u) p),
    'isolation', current_setting('transaction_isolation'),
    'job_exists', EXISTS (SELECT 1 FROM public.jobs WHERE id = $1::uuid),
    'departments', (SELECT coalesce(json_agg(DISTINCT lower(btrim(c.department)) ORDER BY lower(btrim(c.department))), '[]')
                    FROM public.flex_crew_calls c WHERE c.job_id = $1::uuid),
    'caller', coalesce(nullif(current_setting('role'), 'none'), session_user::text)
              || coalesce(' sub=' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), ''),
    'time_left_ms', CASE WHEN current_setting('statement_timeout') IN ('0', '0ms') THEN NULL
                    ELSE (extract(epoch FROM current_setting('statement_timeout')::interval) * 1000
                          - extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint
                    END,
    'rate_limited', coalesce((SELECT f.rate_limited_until > now() FROM flex_sync_private.flex_state f), false),
    'settings', (SELECT row_to_json(s) FROM flex_sync_private.effective_settings() s WHERE s.base_url IS NOT NULL))::text
