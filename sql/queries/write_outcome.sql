-- A department's outcome in one statement: the rows and line records that match what Flex
-- confirmed, and the log row. Sub-statements of one statement may not touch one row twice, so a
-- row the upsert repoints is left to it rather than deleted first: the end state is that of
-- deleting, then upserting.
-- $1 crew call, $2 Flex element; $3, $4 (technician, line) rows that point at a line Flex no
-- longer has (deleted only while they still point there); $5 lines Flex deleted; $6, $7
-- (technician, line) rows to insert or repoint; $8-$11 line records (line, resource, made by the
-- sync, role applied: kept true once set, replaced only when sent); $12-$24 the log row.
WITH stale AS (
    DELETE FROM public.flex_crew_assignments a
    USING unnest($3::text[], $4::text[]) AS s(t, l)
    WHERE a.crew_call_id = $1::uuid AND a.technician_id::text = s.t AND a.flex_line_item_id::text = s.l
      AND NOT a.technician_id::text = ANY ($6::text[])
), gone AS (
    DELETE FROM public.flex_crew_assignments a
    WHERE a.crew_call_id = $1::uuid AND a.flex_line_item_id::text = ANY ($5::text[])
      AND NOT a.technician_id::text = ANY ($6::text[])
), upserted AS (
    -- The only way the sync writes an assignment row: ON CONFLICT, so concurrent writers (the
    -- app, an old Edge Function still deployed) can never make a second row for a technician.
    INSERT INTO public.flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id)
    SELECT $1::uuid, t::uuid, l::uuid FROM unnest($6::text[], $7::text[]) AS u(t, l)
    ON CONFLICT (crew_call_id, technician_id)
    DO UPDATE SET flex_line_item_id = EXCLUDED.flex_line_item_id
    WHERE flex_crew_assignments.flex_line_item_id IS DISTINCT FROM EXCLUDED.flex_line_item_id
), forgotten AS (
    DELETE FROM flex_sync_private.lines l
    WHERE l.flex_line_item_id::text = ANY ($5::text[]) AND NOT l.flex_line_item_id::text = ANY ($8::text[])
), recorded AS (
    INSERT INTO flex_sync_private.lines (flex_line_item_id, flex_element_id, resource_id, created_by_sync, applied_role)
    SELECT l::uuid, $2::uuid, r, c, a FROM unnest($8::text[], $9::text[], $10::bool[], $11::text[]) AS u(l, r, c, a)
    ON CONFLICT (flex_line_item_id) DO UPDATE
    SET created_by_sync = flex_sync_private.lines.created_by_sync OR EXCLUDED.created_by_sync,
        applied_role = coalesce(EXCLUDED.applied_role, flex_sync_private.lines.applied_role),
        resource_id = EXCLUDED.resource_id,
        updated_at = now()
)
INSERT INTO public.flex_sync_log (job_id, department, started_at, duration_ms, added, removed, kept,
                                  roles_set, failed, flex_calls, status, errors, summary, triggered_by)
VALUES ($12::uuid, $13, clock_timestamp() - make_interval(secs => $14 / 1000.0), $14, $15, $16, $17,
        $18, $19, $20, $21, $22, $23, $24)
RETURNING true
