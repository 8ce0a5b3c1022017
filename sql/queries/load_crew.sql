-- A crew call as the sync needs it, read after its lock is held: its id and Flex element, the
-- desired crew (the overridable rule), its rows, what the extension knows about its element's
-- lines, the lines removed duplicate rows pointed at (the sync's own), the department's business
-- roles by tier, and whether the queue holds the item (release_hold.sql then runs after the
-- sync). No row when the job has no crew call for the department.
-- A set of rows comes as one list per column, in one order: json_agg of a plain value looks up
-- how to print its type once, json_build_object once per row (a fifth of the statement's time).
-- $1 job, $2 department.
SELECT json_build_object(
    'id', c.id,
    'element', c.flex_element_id,
    'desired', (SELECT json_build_array(json_agg(d.technician_id), json_agg(d.flex_resource_id), json_agg(d.role_code))
                FROM flex_sync_private.desired_crew($1::uuid, $2) d),
    'rows', (SELECT json_build_array(json_agg(a.technician_id), json_agg(a.flex_line_item_id))
             FROM public.flex_crew_assignments a WHERE a.crew_call_id = c.id),
    'known', (SELECT json_build_array(json_agg(l.flex_line_item_id), json_agg(l.created_by_sync), json_agg(l.applied_role))
              FROM flex_sync_private.lines l WHERE l.flex_element_id = c.flex_element_id),
    'audited', (SELECT json_agg(DISTINCT d.flex_line_item_id) FROM public.flex_dedupe_audit d
                WHERE d.crew_call_id = c.id AND d.flex_line_item_id IS NOT NULL),
    'roles', (SELECT json_object_agg(b.tier, b.business_role_id)
              FROM public.flex_sync_business_roles b WHERE b.department = $2),
    'held', EXISTS (SELECT 1 FROM flex_sync_private.retry_state r
                    WHERE r.job_id = $1::uuid AND r.department = $2 AND r.held_reason IS NOT NULL))::text
FROM public.flex_crew_calls c WHERE c.job_id = $1::uuid AND lower(btrim(c.department)) = $2
