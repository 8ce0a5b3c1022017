-- A department's log row, the last write of its sync. A hold the queue keeps for the item ends
-- with a sync that held nothing ($10): one that ended clean ends it, one that did not turns it
-- into a retry due now. $1-$13 the log row.
WITH released AS (
    DELETE FROM flex_sync_private.retry_state r
    WHERE $10 = 'ok' AND r.job_id = $1::uuid AND r.department = $2 AND r.held_reason IS NOT NULL
), unheld AS (
    UPDATE flex_sync_private.retry_state r SET held_reason = NULL, next_attempt_at = now()
    WHERE $10 IN ('partial', 'failed') AND r.job_id = $1::uuid AND r.department = $2 AND r.held_reason IS NOT NULL
)
INSERT INTO public.flex_sync_log (job_id, department, started_at, duration_ms, added, removed, kept,
                                  roles_set, failed, flex_calls, status, errors, summary, triggered_by)
VALUES ($1::uuid, $2, clock_timestamp() - make_interval(secs => $3 / 1000.0), $3, $4, $5, $6,
        $7, $8, $9, $10, $11, $12, $13)
RETURNING true
