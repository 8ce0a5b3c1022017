-- What an operator looks at: the queue, its dead items, the last sync of each crew call, the last
-- 24 hours and the budget pause. Each answers from an index of flex_sync_log
-- (flex_sync_log_job_idx, flex_sync_log_started_idx), however long the log is.

-- Every item the queue knows: marked, backing off, dead, or held by the guard.
CREATE VIEW flex_sync_queue AS
SELECT i.job_id, i.department, coalesce(m.marks, 0) AS marks,
       least(m.dirty_since, r.dirty_since) AS dirty_since,
       coalesce(r.attempts, 0) AS attempts, r.next_attempt_at, r.last_error, coalesce(r.dead, false) AS dead,
       r.held_reason IS NOT NULL AS held
FROM (SELECT job_id, department FROM flex_sync_private.dirty
      UNION
      SELECT job_id, department FROM flex_sync_private.retry_state) i
LEFT JOIN (SELECT job_id, department, count(*) AS marks, min(marked_at) AS dirty_since
           FROM flex_sync_private.dirty GROUP BY job_id, department) m USING (job_id, department)
LEFT JOIN flex_sync_private.retry_state r USING (job_id, department);

CREATE VIEW flex_sync_dead_items AS
SELECT job_id, department, attempts, last_error FROM flex_sync_private.retry_state WHERE dead;

-- Items whose deletes the guard held: flex_sync_job(job_id, ARRAY[department], force => true)
-- applies them; a change to the item's assignments ends the hold and the queue syncs it again.
CREATE VIEW flex_sync_held_items AS
SELECT job_id, department, held_reason, dirty_since FROM flex_sync_private.retry_state WHERE held_reason IS NOT NULL;

CREATE VIEW flex_sync_last_sync AS
SELECT DISTINCT ON (job_id, department) job_id, department, started_at, status, added, removed, kept,
       roles_set, failed, flex_calls, duration_ms, errors, triggered_by
FROM flex_sync_log
ORDER BY job_id, department, started_at DESC, id DESC;

-- paused_until: while Flex's hourly budget is known to be spent, every sync reports
-- flex_rate_limited without calling Flex and the queue waits; flex_sync_resume() ends it.
CREATE VIEW flex_sync_health AS
SELECT count(*) AS syncs_24h,
       round(avg((status = 'ok')::int) * 100, 1) AS success_rate_pct,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       (SELECT count(*) FROM (SELECT job_id, department FROM flex_sync_private.dirty
                              UNION
                              SELECT job_id, department FROM flex_sync_private.retry_state
                              WHERE NOT dead AND held_reason IS NULL) q) AS queue_depth,
       (SELECT count(*) FROM flex_sync_private.retry_state WHERE dead) AS dead_items,
       (SELECT count(*) FROM flex_sync_private.retry_state WHERE held_reason IS NOT NULL) AS held_items,
       (SELECT rate_limited_until FROM flex_sync_private.flex_state WHERE rate_limited_until > now()) AS paused_until,
       (SELECT 'flex_rate_limited'::text FROM flex_sync_private.flex_state WHERE rate_limited_until > now()) AS pause_reason
FROM flex_sync_log
WHERE started_at > now() - interval '24 hours' AND status <> 'skipped';

CREATE VIEW flex_sync_recent_failures AS
SELECT split_part(e.value, ':', 1) AS error_code, count(*) AS occurrences, max(l.started_at) AS last_seen,
       (array_agg(l.job_id ORDER BY l.started_at DESC))[1] AS last_job_id
FROM flex_sync_log l, jsonb_array_elements_text(l.errors) e
WHERE l.started_at > now() - interval '24 hours'
GROUP BY 1;

-- The last drift check of each crew call (flex_sync_drift): in_sync NULL when its listing failed;
-- the counts of what disagreed, and all of it in drift.
CREATE VIEW flex_sync_drift_status AS
SELECT crew_call_id, job_id, department, checked_at, in_sync,
       jsonb_array_length(drift -> 'missing') AS missing, jsonb_array_length(drift -> 'extra') AS extra,
       jsonb_array_length(drift -> 'duplicated') AS duplicated, jsonb_array_length(drift -> 'wrong_role') AS wrong_role,
       jsonb_array_length(drift -> 'rows') AS rows_astray, drift
FROM flex_sync_private.drift_checks;
