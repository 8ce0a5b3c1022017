-- A department's log row, the last write of its sync. $1-$13 the log row.
INSERT INTO public.flex_sync_log (job_id, department, started_at, duration_ms, added, removed, kept,
                                  roles_set, failed, flex_calls, status, errors, summary, triggered_by)
VALUES ($1::uuid, $2, clock_timestamp() - make_interval(secs => $3 / 1000.0), $3, $4, $5, $6,
        $7, $8, $9, $10, $11, $12, $13)
RETURNING true
