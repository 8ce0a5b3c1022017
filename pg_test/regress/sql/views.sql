-- The health views: their columns, and what they show for a known history.
CREATE EXTENSION flex_sync;
SELECT table_name, string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) AS columns
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name IN ('flex_sync_queue', 'flex_sync_dead_items', 'flex_sync_held_items',
                                                 'flex_sync_last_sync', 'flex_sync_health', 'flex_sync_recent_failures',
                                                 'flex_sync_settings', 'flex_sync_drift_status')
GROUP BY table_name ORDER BY table_name;
-- A history: three syncs of one crew call in the last day (one failed), one of another, one a
-- month old; a dead item, one backing off, one marked.
INSERT INTO flex_sync_log (job_id, department, started_at, duration_ms, added, status, errors, triggered_by) VALUES
    ('00000000-0000-4000-8000-000000000001', 'sound', now() - interval '3 hours', 100, 2, 'ok', '[]', 'cron'),
    ('00000000-0000-4000-8000-000000000001', 'sound', now() - interval '2 hours', 300, 0, 'failed',
     '["flex_http_503: listing the crew call failed; nothing was changed"]', 'cron'),
    ('00000000-0000-4000-8000-000000000001', 'sound', now() - interval '1 hour', 200, 0, 'ok', '[]', 'postgres'),
    ('00000000-0000-4000-8000-000000000002', 'lights', now() - interval '30 minutes', 400, 1, 'partial',
     '["flex_timeout: add failed for tech t"]', 'postgres'),
    ('00000000-0000-4000-8000-000000000002', 'lights', now() - interval '31 days', 50, 0, 'ok', '[]', 'cron');
INSERT INTO flex_sync_private.retry_state (job_id, department, attempts, next_attempt_at, last_error, dead, dirty_since) VALUES
    ('00000000-0000-4000-8000-000000000003', 'sound', 8, now(), 'flex_unauthorized: listing failed', true, now() - interval '1 day'),
    ('00000000-0000-4000-8000-000000000004', 'video', 2, now() + interval '1 hour', 'flex_http_500: x', false, now() - interval '1 hour');
INSERT INTO flex_sync_private.retry_state (job_id, department, attempts, next_attempt_at, last_error, held_reason, dirty_since) VALUES
    ('00000000-0000-4000-8000-000000000006', 'sound', 0, 'infinity', 'empty_desired_set: x', 'empty_desired_set: x', now() - interval '2 hours');
INSERT INTO flex_sync_private.dirty (job_id, department) VALUES
    ('00000000-0000-4000-8000-000000000005', 'sound'), ('00000000-0000-4000-8000-000000000005', 'sound');
SELECT job_id, department, status, added, duration_ms, errors FROM flex_sync_last_sync ORDER BY job_id;
SELECT syncs_24h, success_rate_pct, p50_duration_ms, p95_duration_ms, queue_depth, dead_items, held_items, paused_until, pause_reason
FROM flex_sync_health;
SELECT error_code, occurrences, last_job_id FROM flex_sync_recent_failures ORDER BY error_code;
SELECT job_id, department, marks, attempts, next_attempt_at > now() AS backing_off, last_error, dead, held FROM flex_sync_queue ORDER BY job_id;
SELECT * FROM flex_sync_dead_items;
SELECT job_id, department, held_reason FROM flex_sync_held_items;
-- Drift checks: one crew call in sync, one with a contact missing and one extra, one whose
-- listing failed.
INSERT INTO flex_sync_private.drift_checks (crew_call_id, job_id, department, checked_at, in_sync, drift) VALUES
    ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-000000000001', 'sound', now(), true,
     '{"in_sync": true, "missing": [], "extra": [], "duplicated": [], "wrong_role": [], "rows": []}'),
    ('00000000-0000-4000-8000-0000000000c2', '00000000-0000-4000-8000-000000000002', 'lights', now(), false,
     '{"in_sync": false, "missing": [{"technician_id": "t", "resource_id": "r"}], "extra": [{"line_id": "l", "resource_id": "x"}], "duplicated": [], "wrong_role": [], "rows": []}'),
    ('00000000-0000-4000-8000-0000000000c3', '00000000-0000-4000-8000-000000000003', 'sound', now(), NULL,
     '{"error": "flex_timeout: listing the crew call failed"}');
SELECT crew_call_id, department, in_sync, missing, extra, duplicated, wrong_role, rows_astray, drift ->> 'error' AS error
FROM flex_sync_drift_status ORDER BY crew_call_id;
-- A budget pause is shown, and an operator ends it.
INSERT INTO flex_sync_private.flex_state (rate_limited_until) VALUES (now() + interval '5 minutes');
SELECT paused_until > now() AS paused, pause_reason FROM flex_sync_health;
SELECT flex_sync_resume() > now() AS was_paused;
SELECT paused_until, pause_reason FROM flex_sync_health;
-- Leave the database as it was for the next file.
DROP EXTENSION flex_sync;
