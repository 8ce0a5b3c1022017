-- A drift check's result for one crew call, replacing the one before. $1 crew call, $2 job, $3
-- department, $4 whether it is in sync (NULL: its listing failed), $5 what was found.
INSERT INTO flex_sync_private.drift_checks (crew_call_id, job_id, department, checked_at, in_sync, drift)
VALUES ($1::uuid, $2::uuid, $3, now(), $4, $5)
ON CONFLICT (crew_call_id) DO UPDATE
SET job_id = EXCLUDED.job_id, department = EXCLUDED.department, checked_at = EXCLUDED.checked_at,
    in_sync = EXCLUDED.in_sync, drift = EXCLUDED.drift
