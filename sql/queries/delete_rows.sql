-- What a department's outcome removes, in a statement of its own before write_rows.sql, so a
-- row deleted here and written there is a new row, as sequential writes make it. $1 crew call;
-- $2, $3 (technician, line) rows that point at a line Flex no longer has, deleted only while they
-- still point there; $4 lines Flex deleted, whose rows go (but those of $5, technicians whose
-- contact is adopted: write_rows.sql repoints them) and whose line records go.
WITH stale AS (
    DELETE FROM public.flex_crew_assignments a
    USING unnest($2::text[], $3::text[]) AS s(t, l)
    WHERE a.crew_call_id = $1::uuid AND a.technician_id::text = s.t AND a.flex_line_item_id::text = s.l
), gone AS (
    DELETE FROM public.flex_crew_assignments a
    WHERE a.crew_call_id = $1::uuid AND a.flex_line_item_id::text = ANY ($4::text[])
      AND NOT a.technician_id::text = ANY ($5::text[])
), forgotten AS (
    DELETE FROM flex_sync_private.lines l WHERE l.flex_line_item_id::text = ANY ($4::text[])
)
SELECT true
