-- flex_sync: the DBA's cleanup of duplicate flex_crew_assignments rows and its audit.

-- Rows removed by flex_dedupe_assignments(), one batch per run: nothing a dedupe removes is lost.
CREATE TABLE flex_dedupe_audit (
    batch_id          uuid NOT NULL,
    removed_at        timestamptz NOT NULL,
    crew_call_id      uuid NOT NULL,
    technician_id     uuid NOT NULL,
    flex_line_item_id uuid,
    -- The id of the row kept for the pair (the application's key, whatever its type); the
    -- removed row whole.
    kept_row_id       text,
    removed_row       jsonb NOT NULL
);
-- Read by every sync: the lines a crew call's removed rows pointed at are the sync's own. The
-- only index: a dedupe pays for each one on every row it removes, and a batch is read back by a
-- person, for whom a sequential scan of the audit will do.
CREATE INDEX flex_dedupe_audit_crew_call_idx ON flex_dedupe_audit (crew_call_id);
SELECT pg_catalog.pg_extension_config_dump('flex_dedupe_audit', '');

-- The DBA's cleanup of duplicate (crew_call_id, technician_id) rows left by the old races.
-- Keeps per pair the oldest row by (created_at, id), NULL created_at last; copies every removed
-- row to flex_dedupe_audit; makes sure a unique index or constraint on exactly those columns
-- exists. Writers of the table wait for it (SHARE ROW EXCLUSIVE); readers do not. The unique
-- index is built under that lock, never upgraded to ACCESS EXCLUSIVE, so a sync that read the
-- table before the dedupe started cannot deadlock with it.
--
-- Plain SQL, run as the function's owner: the rows it sees are the rows its owner may see
-- (row-level security included), and what it deletes and audits is exactly what it decided on,
-- because one statement decides, deletes and audits with one snapshot. A row is named by where
-- it is stored, (tableoid, ctid): exact on a partitioned table, which may have no primary key
-- on id, and on a table whose rows share an id (a removed row with its keeper's id takes only
-- itself). The lock keeps those addresses still. The dry run runs the same statement without
-- its delete: a plain read that takes no writer's lock and works in a read-only transaction.
-- Works on a plain or a partitioned table (PARTITION BY HASH (crew_call_id) included) and
-- refuses anything else (a view, a foreign table) before it reads a row. No planner, memory or JIT setting is changed: at 1M rows (bench section 5's table),
-- 256 MB of work_mem or of maintenance_work_mem and JIT on or off all timed within the noise
-- of the defaults, and the planner's own plans are the ones wanted (a TID scan for the delete).
CREATE FUNCTION flex_dedupe_assignments(dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch            uuid := CASE WHEN dry_run THEN NULL ELSE gen_random_uuid() END;
    kind             "char";
    existing         text;
    groups           bigint;
    doomed_count     bigint;
    removed          bigint;
    orphan_count     bigint;
    orphan_sample    jsonb;
    constraint_state text;
BEGIN
    IF dry_run IS NULL THEN
        RAISE EXCEPTION 'dry_run must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass true to see what would be removed, false (the default) to remove it';
    END IF;
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = to_regclass('public.flex_crew_assignments');
    IF kind IS NULL THEN
        RAISE EXCEPTION 'table public.flex_crew_assignments is missing'
            USING ERRCODE = 'undefined_table',
                  HINT = 'create the application tables, or run SELECT flex_sync_install_reference_schema()';
    END IF;
    -- 'r' a table, 'p' a partitioned one. A view or a foreign table can neither keep writers
    -- out for the length of the call nor carry the unique index.
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'public.flex_crew_assignments is a %, not a table',
                CASE kind WHEN 'v' THEN 'view' WHEN 'f' THEN 'foreign table' WHEN 'm' THEN 'materialized view'
                          ELSE format('relation of kind %L', kind) END
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'run flex_dedupe_assignments in the database where flex_crew_assignments is the table itself '
                         '(plain or partitioned); nothing was changed';
    END IF;
    IF NOT dry_run THEN
        LOCK TABLE public.flex_crew_assignments IN SHARE ROW EXCLUSIVE MODE;
    END IF;

    -- Refused before a row is touched: a deferrable pair constraint (raised by
    -- pair_unique_index), and an index left behind under the name the dedupe gives its own (a
    -- failed CREATE INDEX CONCURRENTLY leaves it invalid), which would stop the build.
    existing := flex_sync_private.pair_unique_index();
    IF existing IS NULL AND to_regclass('public.flex_crew_assignments_crew_call_id_technician_id_key') IS NOT NULL THEN
        RAISE EXCEPTION 'public.flex_crew_assignments_crew_call_id_technician_id_key exists but is not a valid unique index on (crew_call_id, technician_id)'
            USING ERRCODE = 'duplicate_table',
                  HINT = 'an invalid index is what a failed CREATE UNIQUE INDEX CONCURRENTLY leaves: DROP INDEX '
                         'public.flex_crew_assignments_crew_call_id_technician_id_key, then run the dedupe again';
    END IF;

    -- One statement text for the dry run and the real one: the real run adds the delete and its
    -- audit copy (the %s), so both report what the same planning found, and the dry run stays a
    -- plain read (no writer's lock, fine in a read-only transaction or on a standby). All parts
    -- of a statement read the table as it was when the statement began (the delete's own
    -- effect is not seen), so the orphan count is the same with and without the delete.
    EXECUTE format($statement$
    WITH doomed AS (
        -- Every row of a pair that has twins but the pair's oldest, with the oldest's id.
        -- The pairs come first (one hashing of the table), so only their rows are sorted.
        -- NULL keys are never duplicates, as for the unique index.
        SELECT r.rel, r.tid, r.crew_call_id, r.flex_line_item_id, r.n, r.keeper_id
        FROM (
            SELECT a.tableoid AS rel, a.ctid AS tid, a.crew_call_id, a.flex_line_item_id,
                   row_number() OVER w AS n, first_value(a.id) OVER w AS keeper_id
            FROM public.flex_crew_assignments a
            JOIN (SELECT p.crew_call_id, p.technician_id
                  FROM public.flex_crew_assignments p
                  WHERE p.crew_call_id IS NOT NULL AND p.technician_id IS NOT NULL
                  GROUP BY p.crew_call_id, p.technician_id
                  HAVING count(*) > 1) d
              ON d.crew_call_id = a.crew_call_id AND d.technician_id = a.technician_id
            -- tableoid, ctid: only to make a tie of two identical rows come out the same way.
            WINDOW w AS (PARTITION BY a.crew_call_id, a.technician_id
                         ORDER BY a.created_at ASC NULLS LAST, a.id ASC, a.tableoid, a.ctid
                         ROWS UNBOUNDED PRECEDING)
        ) r
        WHERE r.n > 1
%s    ), lines AS (
        SELECT d.crew_call_id, d.flex_line_item_id, count(*) AS removed_rows
        FROM doomed d
        WHERE d.flex_line_item_id IS NOT NULL
        GROUP BY d.crew_call_id, d.flex_line_item_id
    ), orphans AS (
        -- A (crew call, Flex line) is orphaned when only removed rows point at it: as many rows
        -- of the crew call point at the line as removed rows do. A kept row of the same crew
        -- call with the same line, its pair's keeper or another technician's row, keeps it.
        SELECT l.crew_call_id, l.flex_line_item_id
        FROM lines l
        JOIN public.flex_crew_assignments a
          ON a.crew_call_id = l.crew_call_id AND a.flex_line_item_id = l.flex_line_item_id
        GROUP BY l.crew_call_id, l.flex_line_item_id, l.removed_rows
        HAVING count(*) = l.removed_rows
    )
    SELECT (SELECT count(*) FROM doomed WHERE n = 2),  -- one second row per pair with twins
           (SELECT count(*) FROM doomed),
           %s,
           (SELECT count(*) FROM orphans),
           (SELECT coalesce(jsonb_agg(jsonb_build_object('crew_call_id', o.crew_call_id,
                                                         'flex_element_id', c.flex_element_id,
                                                         'flex_line_item_id', o.flex_line_item_id::text)
                                      ORDER BY o.crew_call_id, o.flex_line_item_id), '[]')
            FROM (SELECT * FROM orphans ORDER BY crew_call_id, flex_line_item_id LIMIT 1000) o
            LEFT JOIN public.flex_crew_calls c ON c.id = o.crew_call_id)
    $statement$,
        CASE WHEN dry_run THEN '' ELSE $delete$
    ), gone AS (
        -- By address: the list fetches exactly the removed rows (a TID scan, not a read of the
        -- table) and the join matches each to its own entry, partition included.
        DELETE FROM public.flex_crew_assignments a
        USING doomed d
        WHERE a.ctid = ANY (ARRAY(SELECT x.tid FROM doomed x))
          AND a.tableoid = d.rel AND a.ctid = d.tid
        RETURNING d.keeper_id, a.crew_call_id, a.technician_id, a.flex_line_item_id, to_jsonb(a) AS removed_row
    ), audited AS (
        -- The audit copy is the row as the delete returns it. The audit is also the mark: the
        -- sync counts every line its crew call's removed rows pointed at as its own, so the next
        -- flex_sync_job deletes the orphaned contacts in Flex even under orphan_policy 'keep'.
        INSERT INTO @extschema@.flex_dedupe_audit (batch_id, removed_at, crew_call_id, technician_id, flex_line_item_id,
                                       kept_row_id, removed_row)
        SELECT $1, now(), g.crew_call_id, g.technician_id, g.flex_line_item_id::text::uuid, g.keeper_id::text,
               g.removed_row
        FROM gone g
        RETURNING 1
        $delete$ END,
        CASE WHEN dry_run THEN '0' ELSE '(SELECT count(*) FROM audited)' END)
    INTO groups, doomed_count, removed, orphan_count, orphan_sample
    USING batch;

    IF dry_run THEN
        RETURN jsonb_build_object('dry_run', true, 'duplicate_groups', groups, 'rows_removed', 0,
                                  'rows_to_remove', doomed_count,
                                  'constraint', CASE WHEN existing IS NULL THEN 'would_create' ELSE 'existed' END,
                                  'constraint_name', existing, 'audit_batch', NULL,
                                  'orphaned_flex_line_count', orphan_count,
                                  'orphaned_flex_lines', orphan_sample);
    END IF;

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
                              'orphaned_flex_line_count', orphan_count,
                              'orphaned_flex_lines', orphan_sample,
                              'flex_lines_marked_for_removal', orphan_count);
END
$$;
