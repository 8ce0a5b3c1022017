-- A hold the queue keeps for the item ends with a sync that held nothing: one that ended clean
-- ($3 'ok') ends it, one that did not ('partial', 'failed') turns it into a retry due now; a sync
-- that held again keeps it. Run only for an item load_crew.sql found held. $1 job, $2 department.
WITH released AS (
    DELETE FROM flex_sync_private.retry_state r
    WHERE $3 = 'ok' AND r.job_id = $1::uuid AND r.department = $2 AND r.held_reason IS NOT NULL
), unheld AS (
    UPDATE flex_sync_private.retry_state r SET held_reason = NULL, next_attempt_at = now()
    WHERE $3 IN ('partial', 'failed') AND r.job_id = $1::uuid AND r.department = $2 AND r.held_reason IS NOT NULL
)
SELECT true
