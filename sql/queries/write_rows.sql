-- The rows and line records that match what Flex confirmed, after delete_rows.sql and only when
-- there are any. $1 crew call, $2 Flex element; $3, $4 (technician, line) rows to insert or
-- repoint, one per technician; $5-$8 line records (line, resource, made by the sync, role
-- applied: kept true once set, replaced only when sent). Both writes are CTEs: the store runs
-- statements with a row limit of one, which would stop an INSERT ... RETURNING at its first row.
WITH upserted AS (
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
SELECT true
