-- flex_sync: the DBA's cleanup of duplicate flex_crew_assignments rows and its audit.

-- Rows removed by flex_dedupe_assignments(), one batch per run: nothing a dedupe removes is lost.
CREATE TABLE flex_dedupe_audit (
    batch_id          uuid NOT NULL,
    removed_at        timestamptz NOT NULL,
    crew_call_id      uuid NOT NULL,
    technician_id     uuid NOT NULL,
    flex_line_item_id text,
    -- The id of the row kept for the pair; the removed row whole.
    kept_row_id       text,
    removed_row       jsonb NOT NULL
);
-- Read by every sync: the lines a crew call's removed rows pointed at are the sync's own. The
-- only index: a dedupe pays for each one on every row it removes, and a batch is read back by a
-- person, for whom a sequential scan of the audit will do.
CREATE INDEX flex_dedupe_audit_crew_call_idx ON flex_dedupe_audit (crew_call_id);
SELECT pg_catalog.pg_extension_config_dump('flex_dedupe_audit', '');
REVOKE ALL ON flex_dedupe_audit FROM PUBLIC;

-- The DBA's cleanup of duplicate (crew_call_id, technician_id) rows left by the old races.
-- Keeps per pair the oldest row by (created_at, id), NULL created_at last; copies every removed
-- row to flex_dedupe_audit; makes sure a unique index or constraint on exactly those columns
-- exists. Writers of the table wait for it (SHARE ROW EXCLUSIVE); readers do not. The unique
-- index is built under that lock, never upgraded to ACCESS EXCLUSIVE, so a sync that read the
-- table before the dedupe started cannot deadlock with it.
CREATE FUNCTION flex_dedupe_assignments(dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
-- The removed rows are found in one pass that sorts nothing (flex_sync_private.dedupe_plan) and
-- deleted by their ctids, fetched by one TID scan of the whole list: no statement of this
-- function reads the whole table, so a sequential scan is never the plan to take. Each removed
-- row meets its keeper in a hash join on the ctid; a nested loop would start a TID scan per row,
-- which costs twice as much at 100,000 rows. The arrays unnest into memory (a function scan keeps
-- its rows) and the index build sorts in memory; no JIT compilation.
SET enable_seqscan = off
SET enable_nestloop = off
SET work_mem = '64MB'
SET maintenance_work_mem = '256MB'
SET jit = off
AS $$
DECLARE
    batch        uuid := CASE WHEN dry_run THEN NULL ELSE gen_random_uuid() END;
    existing     text;
    tids         tid[];
    keeper_ids   uuid[];
    groups       bigint;
    orphan_calls uuid[];
    orphan_lines uuid[];
    orphan_sample jsonb;
    removed      bigint := 0;
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
    SELECT p.tids, p.keeper_ids, p.duplicate_groups, p.orphaned_crew_call_ids, p.orphaned_line_ids
    INTO tids, keeper_ids, groups, orphan_calls, orphan_lines
    FROM flex_sync_private.dedupe_plan('public.flex_crew_assignments'::regclass) p;

    -- Flex contacts no row will account for any more (a kept row sharing the line keeps it).
    SELECT coalesce(jsonb_agg(jsonb_build_object('crew_call_id', o.crew_call_id,
                                                 'flex_element_id', c.flex_element_id,
                                                 'flex_line_item_id', o.line::text) ORDER BY o.n), '[]')
    INTO orphan_sample
    FROM unnest(orphan_calls[1:1000], orphan_lines[1:1000]) WITH ORDINALITY AS o(crew_call_id, line, n)
    JOIN public.flex_crew_calls c ON c.id = o.crew_call_id;

    IF dry_run THEN
        RETURN jsonb_build_object('dry_run', true, 'duplicate_groups', groups, 'rows_removed', 0,
                                  'rows_to_remove', cardinality(tids),
                                  'constraint', CASE WHEN existing IS NULL THEN 'would_create' ELSE 'existed' END,
                                  'constraint_name', existing, 'audit_batch', NULL,
                                  'orphaned_flex_line_count', cardinality(orphan_lines),
                                  'orphaned_flex_lines', orphan_sample);
    END IF;

    -- The audit is also the mark: the sync counts every line its crew call's removed rows
    -- pointed at as its own, so the next flex_sync_job deletes the orphaned contacts in Flex
    -- even under orphan_policy 'keep'.
    -- The audit copy is the row as the delete returns it, next to its pair's keeper.
    WITH gone AS (
        DELETE FROM public.flex_crew_assignments a
        USING unnest(tids, keeper_ids) AS k(tid, keeper_id)
        WHERE a.ctid = ANY (tids) AND a.ctid = k.tid
        RETURNING k.keeper_id, a.crew_call_id, a.technician_id, a.flex_line_item_id, to_jsonb(a) AS removed_row
    )
    INSERT INTO flex_dedupe_audit (batch_id, removed_at, crew_call_id, technician_id, flex_line_item_id, kept_row_id, removed_row)
    SELECT batch, now(), crew_call_id, technician_id, flex_line_item_id::text, keeper_id::text, removed_row
    FROM gone;
    GET DIAGNOSTICS removed = ROW_COUNT;

    IF existing IS NULL THEN
        CREATE UNIQUE INDEX flex_crew_assignments_crew_call_id_technician_id_key
            ON public.flex_crew_assignments (crew_call_id, technician_id);
        existing := 'flex_crew_assignments_crew_call_id_technician_id_key';
        constraint_state := 'created';
    ELSE
        constraint_state := 'existed';
    END IF;
    RETURN jsonb_build_object('dry_run', false, 'duplicate_groups', groups, 'rows_removed', removed,
                              'constraint', constraint_state, 'constraint_name', existing,
                              'audit_batch', batch,
                              'orphaned_flex_line_count', cardinality(orphan_lines),
                              'orphaned_flex_lines', orphan_sample,
                              'flex_lines_marked_for_removal', cardinality(orphan_lines));
END
$$;
