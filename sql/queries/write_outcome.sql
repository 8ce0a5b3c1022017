-- A department's outcome, after delete_rows.sql: the rows and line records that match what Flex
-- confirmed, and the log row, in one statement. $1 crew call, $2 Flex element; $3, $4
-- (technician, line) rows to insert or repoint, one per technician; $5-$8 line records (line,
-- resource, made by the sync, role applied: kept true once set, replaced only when sent); $9-$21
-- the log row. Without a crew call (a skipped department) only the log row is written. A hold
-- the queue keeps for the item ends with a sync that held nothing ($18): one that ended clean
-- ends it, one that did not turns it into a retry due now.
WITH released AS (
    DELETE FROM flex_sync_private.retry_state r
    WHERE $18 = 'ok' AND r.job_id = $9::uuid AND r.department = $10 AND r.held_reason IS NOT NULL
), unheld AS (
    UPDATE flex_sync_private.retry_state r SET held_reason = NULL, next_attempt_at = now()
    WHERE $18 IN ('partial', 'failed') AND r.job_id = $9::uuid AND r.department = $10 AND r.held_reason IS NOT NULL
), upserted AS (
    -- The only way the sync writes an assignment row: ON CONFLICT, so concurrent writers (the
    -- app, an old Edge Function still deployed) can never make a second row for a technician.
    INSERT INTO public.flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id)
    SELECT $1::uuid, t::uuid, l::uuid FROM unnest($3::text[], $4::text[]) AS u(t, l)
    ON CONFLICT (crew_call_id, technician_id)
    DO UPDATE SET flex_line_item_id = EXCLUDED.flex_line_item_id
    WHERE flex_crew_assignments.flex_line_item_id IS DISTINCT FROM EXCLUDED.flex_line_item_id
), recorded AS (
    INSERT INTO flex_sync_private.lines (flex_line_item_id, flex_element_id, resource_id, created_by_sync, applied_role)
    SELECT l::uuid, $2::uuid, r, c, a FROM unnest($5::text[], $6::text[], $7::bool[], $8::text[]) AS u(l, r, c, a)
    ON CONFLICT (flex_line_item_id) DO UPDATE
    SET created_by_sync = flex_sync_private.lines.created_by_sync OR EXCLUDED.created_by_sync,
        applied_role = coalesce(EXCLUDED.applied_role, flex_sync_private.lines.applied_role),
        resource_id = EXCLUDED.resource_id,
        updated_at = now()
)
INSERT INTO public.flex_sync_log (job_id, department, started_at, duration_ms, added, removed, kept,
                                  roles_set, failed, flex_calls, status, errors, summary, triggered_by)
VALUES ($9::uuid, $10, clock_timestamp() - make_interval(secs => $11 / 1000.0), $11, $12, $13, $14,
        $15, $16, $17, $18, $19, $20, $21)
RETURNING true
