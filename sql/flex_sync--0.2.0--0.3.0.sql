-- flex_sync 0.2.0 -> 0.3.0
-- flex_dedupe_assignments: the removed rows are found by flex_sync_private.dedupe_removals(), one
--   pass over the table that sorts nothing, instead of a window over the whole table and a second
--   scan for orphaned lines. Orphaned lines are no longer copied into flex_sync_private.lines: the
--   sync reads them from flex_dedupe_audit (new index on crew_call_id).
-- flex_sync_private.first_items: dropped, nothing called it.
\echo Use "ALTER EXTENSION flex_sync UPDATE TO '0.3.0'" to load this file. \quit

DROP FUNCTION flex_sync_private.first_items(jsonb, integer);

-- Read by every sync: the lines a crew call's removed rows pointed at are the sync's own.
CREATE INDEX flex_dedupe_audit_crew_call_idx ON flex_dedupe_audit (crew_call_id);

CREATE FUNCTION flex_sync_private."dedupe_removals"() RETURNS TABLE (
	"tid" tid,
	"crew_call_id" uuid,
	"technician_id" uuid,
	"flex_line_item_id" uuid,
	"keeper_id" uuid,
	"line_orphaned" bool
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'dedupe_removals_wrapper';
REVOKE EXECUTE ON FUNCTION flex_sync_private.dedupe_removals() FROM PUBLIC;

-- The DBA's cleanup of duplicate (crew_call_id, technician_id) rows left by the old races.
-- Keeps per pair the oldest row by (created_at, id), NULL created_at last; copies every removed
-- row to flex_dedupe_audit; makes sure a unique index or constraint on exactly those columns
-- exists. Writers of the table wait for it (SHARE ROW EXCLUSIVE); readers do not. The unique
-- index is built under that lock, never upgraded to ACCESS EXCLUSIVE, so a sync that read the
-- table before the dedupe started cannot deadlock with it.
CREATE OR REPLACE FUNCTION flex_dedupe_assignments(dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
-- The removed rows are found in one pass that sorts nothing (flex_sync_private.dedupe_removals);
-- the index build sorts in memory; no JIT compilation.
SET work_mem = '256MB'
SET maintenance_work_mem = '256MB'
SET jit = off
AS $$
DECLARE
    batch        uuid := CASE WHEN dry_run THEN NULL ELSE gen_random_uuid() END;
    existing     text;
    groups       bigint;
    doomed       bigint;
    removed      bigint := 0;
    orphan_count bigint;
    orphan_sample jsonb;
    constraint_state text;
BEGIN
    IF to_regclass('public.flex_crew_assignments') IS NULL THEN
        RAISE EXCEPTION 'table public.flex_crew_assignments is missing'
            USING ERRCODE = 'undefined_table',
                  HINT = 'create the application tables, or run SELECT flex_sync_install_reference_schema()';
    END IF;
    IF NOT dry_run THEN
        LOCK TABLE public.flex_crew_assignments IN SHARE ROW EXCLUSIVE MODE;
    END IF;

    SELECT i.indexrelid::regclass::text INTO existing
    FROM pg_index i
    WHERE i.indrelid = 'public.flex_crew_assignments'::regclass
      AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = ARRAY['crew_call_id', 'technician_id']
    LIMIT 1;

    -- Rows are addressed by ctid, stable under the lock.
    CREATE TEMP TABLE flex_dedupe_doomed ON COMMIT DROP AS
    SELECT * FROM flex_sync_private.dedupe_removals();
    SELECT count(*) INTO doomed FROM flex_dedupe_doomed;
    SELECT count(*) INTO groups FROM (SELECT DISTINCT crew_call_id, technician_id FROM flex_dedupe_doomed) g;

    -- Flex contacts no row will account for any more (a kept row sharing the line keeps it).
    CREATE TEMP TABLE flex_dedupe_orphans ON COMMIT DROP AS
    SELECT DISTINCT crew_call_id, flex_line_item_id FROM flex_dedupe_doomed WHERE line_orphaned;
    SELECT count(*) INTO orphan_count FROM flex_dedupe_orphans;
    SELECT coalesce(jsonb_agg(o), '[]') INTO orphan_sample FROM (
        SELECT o.crew_call_id, c.flex_element_id, o.flex_line_item_id::text AS flex_line_item_id
        FROM (SELECT * FROM flex_dedupe_orphans ORDER BY crew_call_id, flex_line_item_id LIMIT 1000) o
        JOIN public.flex_crew_calls c ON c.id = o.crew_call_id
        ORDER BY o.crew_call_id, o.flex_line_item_id) o;

    IF dry_run THEN
        DROP TABLE flex_dedupe_doomed, flex_dedupe_orphans;
        RETURN jsonb_build_object('dry_run', true, 'duplicate_groups', groups, 'rows_removed', 0,
                                  'rows_to_remove', doomed,
                                  'constraint', CASE WHEN existing IS NULL THEN 'would_create' ELSE 'existed' END,
                                  'constraint_name', existing, 'audit_batch', NULL,
                                  'orphaned_flex_line_count', orphan_count,
                                  'orphaned_flex_lines', orphan_sample);
    END IF;

    -- The audit is also the mark: the sync counts every line its crew call's removed rows
    -- pointed at as its own, so the next flex_sync_job deletes the orphaned contacts in Flex
    -- even under orphan_policy 'keep'.
    -- One TID scan deletes them; the audit copy is the row as the delete returns it, joined to
    -- its keeper as a row and only then turned into json, so the join hashes the narrow form.
    WITH gone AS (
        DELETE FROM public.flex_crew_assignments a
        WHERE a.ctid = ANY (ARRAY(SELECT tid FROM flex_dedupe_doomed))
        RETURNING a.ctid AS tid, a AS removed_row
    )
    INSERT INTO flex_dedupe_audit (batch_id, removed_at, crew_call_id, technician_id, flex_line_item_id, kept_row_id, removed_row)
    SELECT batch, now(), d.crew_call_id, d.technician_id, d.flex_line_item_id::text, d.keeper_id::text, to_jsonb(g.removed_row)
    FROM gone g JOIN flex_dedupe_doomed d USING (tid);
    GET DIAGNOSTICS removed = ROW_COUNT;

    IF existing IS NULL THEN
        CREATE UNIQUE INDEX flex_crew_assignments_crew_call_id_technician_id_key
            ON public.flex_crew_assignments (crew_call_id, technician_id);
        existing := 'flex_crew_assignments_crew_call_id_technician_id_key';
        constraint_state := 'created';
    ELSE
        constraint_state := 'existed';
    END IF;
    DROP TABLE flex_dedupe_doomed, flex_dedupe_orphans;
    RETURN jsonb_build_object('dry_run', false, 'duplicate_groups', groups, 'rows_removed', removed,
                              'constraint', constraint_state, 'constraint_name', existing,
                              'audit_batch', batch,
                              'orphaned_flex_line_count', orphan_count,
                              'orphaned_flex_lines', orphan_sample,
                              'flex_lines_marked_for_removal', orphan_count);
END
$$;
