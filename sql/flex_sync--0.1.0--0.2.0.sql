-- flex_sync 0.1.0 -> 0.2.0
-- flex_sync_pending: finds its items by walking the marks' primary key instead of grouping the
--   whole queue, and clears only the marks it read before the sync (a mark committed later with
--   a smaller id used to be cleared unsynced).
-- flex_dedupe_assignments: one TID delete that returns the audit copy, one window function fewer,
--   orphans joined on the column's own type before removed rows are excluded, a report capped
--   before it is built, and a parallel sort.
\echo Use "ALTER EXTENSION flex_sync UPDATE TO '0.2.0'" to load this file. \quit

-- Syncs due queue items until max_jobs are done or max_seconds have passed. Items are taken in
-- the order they were first marked, walking the marks' primary key from where the last item was
-- found, so picking items reads only the marks it needs however long the queue is (the count of
-- what remains, in the result, reads it all). Each item runs in its
-- own subtransaction; an item another scheduler holds is skipped (its advisory lock is busy), so
-- two schedulers never sync one item at once. After a sync, only the marks read before it started
-- are cleared: a mark committed later, even one with a smaller id, keeps the item due. Failures
-- back off exponentially with jitter; after max_attempts an item is dead until flex_sync_requeue().
CREATE OR REPLACE FUNCTION flex_sync_pending(max_jobs integer DEFAULT 50, max_seconds integer DEFAULT 50,
                                             max_attempts integer DEFAULT 8)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    started   timestamptz := clock_timestamp();
    item      record;
    position  bigint := 0;
    taken     text[] := '{}';
    seen      bigint[];
    result    jsonb;
    status    text;
    failure   text;
    synced    integer := 0;
    failed    integer := 0;
    skipped   integer := 0;
BEGIN
    IF max_jobs IS NULL OR max_jobs < 1 OR max_seconds IS NULL OR max_seconds < 1 THEN
        RAISE EXCEPTION 'max_jobs and max_seconds must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WHILE cardinality(taken) < max_jobs AND clock_timestamp() - started <= make_interval(secs => max_seconds) LOOP
        SELECT d.mark_id, d.job_id, d.department INTO item
        FROM flex_sync_private.dirty d
        WHERE d.mark_id > position
          AND NOT (d.job_id::text || '/' || d.department = ANY (taken))
          AND NOT EXISTS (SELECT 1 FROM flex_sync_private.retry_state r
                          WHERE r.job_id = d.job_id AND r.department = d.department
                            AND (r.dead OR r.next_attempt_at > now()))
        ORDER BY d.mark_id
        LIMIT 1;
        EXIT WHEN NOT FOUND;
        position := item.mark_id;
        taken := taken || (item.job_id::text || '/' || item.department);
        SELECT array_agg(d.mark_id) INTO seen
        FROM flex_sync_private.dirty d WHERE d.job_id = item.job_id AND d.department = item.department;
        failure := NULL;
        BEGIN
            result := flex_sync_job(item.job_id, ARRAY[item.department], false);
            status := result -> 'summary' -> item.department ->> 'status';
            IF status = 'skipped' AND result -> 'summary' -> item.department ->> 'note' <> 'no crew call mapping' THEN
                skipped := skipped + 1;
                CONTINUE;
            END IF;
            IF status IN ('failed', 'partial') THEN
                failure := coalesce(result -> 'summary' -> item.department -> 'errors' ->> 0, status);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            failure := SQLSTATE || ': ' || SQLERRM;
        END;
        IF failure IS NULL THEN
            synced := synced + 1;
            DELETE FROM flex_sync_private.dirty
            WHERE job_id = item.job_id AND department = item.department AND mark_id = ANY (seen);
            DELETE FROM flex_sync_private.retry_state WHERE job_id = item.job_id AND department = item.department;
        ELSE
            failed := failed + 1;
            INSERT INTO flex_sync_private.retry_state AS r (job_id, department, attempts, next_attempt_at, last_error, dead)
            VALUES (item.job_id, item.department, 1, now() + interval '1 second' * (1 + random() * 2), failure, max_attempts <= 1)
            ON CONFLICT (job_id, department) DO UPDATE
            SET attempts = r.attempts + 1,
                -- Exponential backoff with full jitter, capped at one hour.
                next_attempt_at = now() + interval '1 second' * random() * least(3600, 2 ^ (r.attempts + 1) * 5),
                last_error = EXCLUDED.last_error,
                dead = r.attempts + 1 >= max_attempts;
        END IF;
    END LOOP;
    RETURN jsonb_build_object('synced', synced, 'failed', failed, 'skipped', skipped,
                              'remaining', (SELECT count(*) FROM (SELECT DISTINCT job_id, department
                                                                  FROM flex_sync_private.dirty) q),
                              'duration_ms', round(extract(epoch FROM clock_timestamp() - started) * 1000));
END
$$;

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
-- One sort of the whole table and one index build: in memory, the sort split across parallel
-- workers (the default costs keep a sort this size serial), and no JIT compilation.
SET work_mem = '256MB'
SET maintenance_work_mem = '256MB'
SET parallel_setup_cost = 100
SET parallel_tuple_cost = 0.01
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
    marked       bigint := 0;
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

    -- One sort ranks every pair's rows and names each removed row's keeper. Rows are addressed
    -- by ctid, stable under the lock, so the delete fetches exactly them (one TID scan).
    CREATE TEMP TABLE flex_dedupe_doomed ON COMMIT DROP AS
    SELECT tid, crew_call_id, technician_id, flex_line_item_id, keeper_id FROM (
        SELECT a.ctid AS tid, a.crew_call_id, a.technician_id, a.flex_line_item_id,
               first_value(a.id) OVER w AS keeper_id, row_number() OVER w AS rn
        FROM public.flex_crew_assignments a
        WINDOW w AS (PARTITION BY a.crew_call_id, a.technician_id ORDER BY a.created_at ASC NULLS LAST, a.id
                     ROWS UNBOUNDED PRECEDING)
    ) r
    WHERE r.rn > 1;
    SELECT count(*), count(DISTINCT (crew_call_id, technician_id)) INTO doomed, groups FROM flex_dedupe_doomed;

    -- Line ids only removed rows referenced: Flex contacts no row will account for any more
    -- (a keeper sharing its removed twin's line keeps it). Compared in the column's own type, so
    -- the scan of the table hashes no text.
    CREATE TEMP TABLE flex_dedupe_orphans ON COMMIT DROP AS
    SELECT DISTINCT d.crew_call_id, d.flex_line_item_id
    FROM flex_dedupe_doomed d
    WHERE d.flex_line_item_id IS NOT NULL
      AND d.flex_line_item_id NOT IN (
          SELECT a.flex_line_item_id FROM public.flex_crew_assignments a
          WHERE a.flex_line_item_id IN (SELECT flex_line_item_id FROM flex_dedupe_doomed)
            AND NOT EXISTS (SELECT 1 FROM flex_dedupe_doomed x WHERE x.tid = a.ctid));
    SELECT count(*) INTO orphan_count FROM flex_dedupe_orphans;
    SELECT coalesce(jsonb_agg(o), '[]') INTO orphan_sample FROM (
        SELECT o.crew_call_id, c.flex_element_id, o.flex_line_item_id::text AS flex_line_item_id
        FROM flex_dedupe_orphans o JOIN public.flex_crew_calls c ON c.id = o.crew_call_id
        ORDER BY o.crew_call_id, o.flex_line_item_id
        LIMIT 1000) o;

    IF dry_run THEN
        DROP TABLE flex_dedupe_doomed, flex_dedupe_orphans;
        RETURN jsonb_build_object('dry_run', true, 'duplicate_groups', groups, 'rows_removed', 0,
                                  'rows_to_remove', doomed,
                                  'constraint', CASE WHEN existing IS NULL THEN 'would_create' ELSE 'existed' END,
                                  'constraint_name', existing, 'audit_batch', NULL,
                                  'orphaned_flex_line_count', orphan_count,
                                  'orphaned_flex_lines', orphan_sample);
    END IF;

    -- The audit copy is the deleted row itself, as the delete returns it.
    WITH gone AS (
        DELETE FROM public.flex_crew_assignments a
        WHERE a.ctid = ANY (ARRAY(SELECT tid FROM flex_dedupe_doomed))
        RETURNING a.ctid AS tid, to_jsonb(a) AS removed_row
    )
    INSERT INTO flex_dedupe_audit (batch_id, removed_at, crew_call_id, technician_id, flex_line_item_id, kept_row_id, removed_row)
    SELECT batch, now(), d.crew_call_id, d.technician_id, d.flex_line_item_id::text, d.keeper_id::text, g.removed_row
    FROM gone g JOIN flex_dedupe_doomed d USING (tid);
    GET DIAGNOSTICS removed = ROW_COUNT;

    -- Marked as the sync's own, so the next flex_sync_job removes these contacts in Flex even
    -- under orphan_policy 'keep'. In key order: the index pages fill one after another.
    INSERT INTO flex_sync_private.lines (flex_line_item_id, flex_element_id, resource_id, created_by_sync)
    SELECT o.flex_line_item_id::text, c.flex_element_id, '', true
    FROM flex_dedupe_orphans o JOIN public.flex_crew_calls c ON c.id = o.crew_call_id
    ORDER BY 1
    ON CONFLICT (flex_line_item_id) DO UPDATE SET created_by_sync = true, updated_at = now();
    GET DIAGNOSTICS marked = ROW_COUNT;

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
                              'flex_lines_marked_for_removal', marked);
END
$$;
