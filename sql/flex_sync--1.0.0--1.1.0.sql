-- flex_sync 1.0.0 to 1.1.0: the queue commits per item (flex_sync_run_queue), dead and
-- backing-off items cost a run nothing, the profile trigger marks through one overridable rule,
-- flex_sync_log has a retention (option log_retention) and indexes for the health views, and a
-- budget pause is shown (flex_sync_health.paused_until) and cleared (flex_sync_resume); Flex line
-- ids are uuid in every table.
-- Objects are created exactly as a fresh 1.1.0 install creates them.

CREATE FUNCTION flex_sync_private.item_lock(p_job_id uuid, p_department text, OUT classid integer, OUT objid integer)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT x'464C5853'::integer, hashtext(p_job_id::text || '/' || p_department);
$$;

ALTER TABLE flex_sync_private.retry_state ADD COLUMN dirty_since timestamptz;
UPDATE flex_sync_private.retry_state r
SET dirty_since = (SELECT min(d.marked_at) FROM flex_sync_private.dirty d
                   WHERE d.job_id = r.job_id AND d.department = r.department);
CREATE INDEX retry_state_due_idx ON flex_sync_private.retry_state (next_attempt_at) WHERE NOT dead;

DROP INDEX flex_sync_log_job_idx;
CREATE INDEX flex_sync_log_job_idx ON flex_sync_log (job_id, department, started_at DESC, id DESC);
CREATE INDEX flex_sync_log_started_idx ON flex_sync_log (started_at);

-- Flex line ids are uuid everywhere, as flex_crew_assignments has them.
ALTER TABLE flex_sync_private.lines ALTER COLUMN flex_line_item_id TYPE uuid USING flex_line_item_id::uuid;
ALTER TABLE flex_dedupe_audit ALTER COLUMN flex_line_item_id TYPE uuid USING flex_line_item_id::uuid;

-- The retention a fresh configure writes; the prune reads it from the stored options.
UPDATE flex_sync_private.settings SET options = options || '{"log_retention": "30 days"}'
WHERE NOT options ? 'log_retention';

CREATE FUNCTION flex_sync_private.jobs_to_mark_for_profile(p_technician_id uuid)
RETURNS SETOF uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = to_regclass('public.jobs') AND a.attname = 'end_time' AND NOT a.attisdropped
                 AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)) THEN
        RETURN QUERY EXECUTE
            'SELECT ja.job_id FROM public.job_assignments ja JOIN public.jobs j ON j.id = ja.job_id
             WHERE ja.technician_id = $1 AND (j.end_time IS NULL OR j.end_time >= now())
             ORDER BY j.end_time NULLS LAST, ja.job_id LIMIT 500'
            USING p_technician_id;
    ELSE
        RETURN QUERY
        SELECT ja.job_id FROM public.job_assignments ja
        WHERE ja.technician_id = p_technician_id
        ORDER BY ja.job_id LIMIT 500;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION flex_sync_private.on_resource_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM flex_sync_private.mark_dirty(j.job_id, NULL)
    FROM flex_sync_private.jobs_to_mark_for_profile(NEW.id) AS j(job_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION flex_sync_private.prune_log(p_batch integer, p_after timestamptz, OUT pruned integer, OUT through timestamptz)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- Without settings or the option the cutoff is NULL and nothing goes.
    WITH old AS (
        SELECT l.id, l.started_at FROM @extschema@.flex_sync_log l
        WHERE l.started_at >= p_after
          AND l.started_at < (SELECT now() - (s.options ->> 'log_retention')::interval FROM flex_sync_private.settings s)
        ORDER BY l.started_at LIMIT p_batch
        FOR UPDATE OF l SKIP LOCKED
    ), gone AS (
        -- By the primary key: a join would let the generic plan hash the whole log.
        DELETE FROM @extschema@.flex_sync_log l WHERE l.id = ANY (ARRAY(SELECT old.id FROM old)) RETURNING l.started_at
    )
    SELECT count(*)::integer, max(started_at) FROM gone;
$$;

CREATE FUNCTION flex_sync_private.queue_run_start(max_jobs integer, max_seconds integer, max_attempts integer)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_jobs IS NULL OR max_jobs < 1 OR max_seconds IS NULL OR max_seconds < 1
       OR max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'max_jobs, max_seconds and max_attempts must be positive integers'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the defaults are max_jobs => 50, max_seconds => 50, max_attempts => 8';
    END IF;
    RETURN jsonb_build_object(
        'started', clock_timestamp(), 'max_jobs', max_jobs, 'max_seconds', max_seconds,
        'max_attempts', max_attempts,
        -- Marks are walked by id from here; taken: the items this run has tried.
        'after_mark', 0, 'taken', '[]'::jsonb,
        -- Whether items may still be due, and whether the last prune found a full batch.
        'items', true, 'prune', true, 'prune_after', '-infinity'::timestamptz,
        'synced', 0, 'failed', 0, 'skipped', 0, 'pruned', 0);
END
$$;

CREATE FUNCTION flex_sync_private.queue_run_step(run jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prune_batch constant integer := 1000;
    fold_limit  constant integer := 1000;
    -- The clock, not the transaction's start: the function form runs in one transaction.
    moment      timestamptz := clock_timestamp();
    taken       text[] := ARRAY(SELECT jsonb_array_elements_text(run -> 'taken'));
    item        record;
    has_item    boolean := false;
    walked_all  boolean := false;
    folds       integer := 0;
    item_key    record;
    held_class  integer;
    held_obj    integer;
    waiting     boolean;
    seen        bigint[];
    since       timestamptz;
    result      jsonb;
    status      text;
    failure     text;
    pruned      integer;
    through     timestamptz;
    paused      timestamptz;
BEGIN
    IF (run ->> 'prune')::boolean THEN
        SELECT p.pruned, p.through INTO pruned, through
        FROM flex_sync_private.prune_log(prune_batch, (run ->> 'prune_after')::timestamptz) p;
        run := run || jsonb_build_object('pruned', (run ->> 'pruned')::integer + pruned, 'prune', pruned = prune_batch,
                                         'prune_after', coalesce(through, (run ->> 'prune_after')::timestamptz));
    END IF;
    SELECT f.rate_limited_until INTO paused
    FROM flex_sync_private.flex_state f WHERE f.rate_limited_until > moment;
    IF paused IS NOT NULL THEN
        run := run || jsonb_build_object('items', false, 'paused_until', paused);
    ELSIF cardinality(taken) >= (run ->> 'max_jobs')::integer THEN
        run := run || jsonb_build_object('items', false);
    END IF;

    IF (run ->> 'items')::boolean THEN
        SELECT r.job_id, r.department INTO item
        FROM flex_sync_private.retry_state r
        WHERE NOT r.dead AND r.next_attempt_at <= moment
          AND NOT (r.job_id::text || '/' || r.department = ANY (taken))
        ORDER BY r.next_attempt_at
        LIMIT 1;
        has_item := FOUND;
        -- One subtransaction for the walk, so that an error (a cancel, a timeout) never leaves
        -- the item's lock behind: held by the session, it would keep every sync of the item
        -- waiting. The lock is the session's, taken for one statement, because a
        -- transaction's would pile up in the function form, one per folded item.
        BEGIN
            WHILE NOT has_item AND folds < fold_limit LOOP
                SELECT d.mark_id, d.job_id, d.department INTO item
                FROM flex_sync_private.dirty d
                WHERE d.mark_id > (run ->> 'after_mark')::bigint
                  AND NOT (d.job_id::text || '/' || d.department = ANY (taken))
                ORDER BY d.mark_id
                LIMIT 1;
                IF NOT FOUND THEN
                    walked_all := true;
                    EXIT;
                END IF;
                run := run || jsonb_build_object('after_mark', item.mark_id);
                SELECT * INTO item_key FROM flex_sync_private.item_lock(item.job_id, item.department);
                CONTINUE WHEN NOT pg_try_advisory_lock(item_key.classid, item_key.objid);
                held_class := item_key.classid;
                held_obj := item_key.objid;
                -- One statement, so a requeue (which deletes the retry row and marks the item)
                -- is seen whole or not at all.
                WITH retry AS (
                    SELECT 1 FROM flex_sync_private.retry_state r
                    WHERE r.job_id = item.job_id AND r.department = item.department
                ), folded AS (
                    DELETE FROM flex_sync_private.dirty d
                    WHERE d.job_id = item.job_id AND d.department = item.department
                      AND EXISTS (SELECT 1 FROM retry)
                    RETURNING 1
                )
                SELECT EXISTS (SELECT 1 FROM retry) INTO waiting;
                PERFORM pg_advisory_unlock(held_class, held_obj);
                held_class := NULL;
                has_item := NOT waiting;
                folds := folds + waiting::integer;
            END LOOP;
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            IF held_class IS NOT NULL THEN
                PERFORM pg_advisory_unlock(held_class, held_obj);
            END IF;
            RAISE;
        END;
        IF NOT has_item AND walked_all THEN
            run := run || jsonb_build_object('items', false);
        END IF;
    END IF;

    IF has_item THEN
        run := jsonb_set(run, '{taken}', (run -> 'taken') || to_jsonb(item.job_id::text || '/' || item.department));
        SELECT array_agg(d.mark_id), min(d.marked_at) INTO seen, since
        FROM flex_sync_private.dirty d WHERE d.job_id = item.job_id AND d.department = item.department;
        failure := NULL;
        status := NULL;
        BEGIN
            result := @extschema@.flex_sync_job(item.job_id, ARRAY[item.department], false);
            status := result -> 'summary' -> item.department ->> 'status';
            IF status IN ('failed', 'partial') THEN
                failure := coalesce(result -> 'summary' -> item.department -> 'errors' ->> 0, status);
            ELSIF status = 'skipped' AND result -> 'summary' -> item.department ->> 'skip' = 'no_crew_call' THEN
                failure := 'no_crew_call: the job has no crew call for the department';
            ELSIF status IS NULL THEN
                failure := 'no result for department ' || item.department;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            failure := SQLSTATE || ': ' || SQLERRM;
            -- The rolled-back subtransaction gave the item's lock back: take it again before
            -- writing the item's state, or leave the state to whoever holds it now.
            SELECT * INTO item_key FROM flex_sync_private.item_lock(item.job_id, item.department);
            IF NOT pg_try_advisory_xact_lock(item_key.classid, item_key.objid) THEN
                status := 'skipped';
                failure := NULL;
            END IF;
        END;
        IF failure IS NULL AND status = 'skipped' THEN
            run := run || jsonb_build_object('skipped', (run ->> 'skipped')::integer + 1);
        ELSE
            DELETE FROM flex_sync_private.dirty
            WHERE job_id = item.job_id AND department = item.department AND mark_id = ANY (seen);
            IF failure IS NULL THEN
                run := run || jsonb_build_object('synced', (run ->> 'synced')::integer + 1);
                DELETE FROM flex_sync_private.retry_state WHERE job_id = item.job_id AND department = item.department;
            ELSE
                run := run || jsonb_build_object('failed', (run ->> 'failed')::integer + 1);
                INSERT INTO flex_sync_private.retry_state AS r
                       (job_id, department, attempts, next_attempt_at, last_error, dead, dirty_since)
                VALUES (item.job_id, item.department, 1, clock_timestamp() + interval '1 second' * (1 + random() * 2),
                        failure, (run ->> 'max_attempts')::integer <= 1, coalesce(since, moment))
                ON CONFLICT (job_id, department) DO UPDATE
                SET attempts = r.attempts + 1,
                    -- Exponential backoff with full jitter, capped at one hour.
                    next_attempt_at = clock_timestamp() + interval '1 second' * random() * least(3600, 2 ^ (r.attempts + 1) * 5),
                    last_error = EXCLUDED.last_error,
                    dead = r.attempts + 1 >= (run ->> 'max_attempts')::integer,
                    dirty_since = least(r.dirty_since, EXCLUDED.dirty_since);
            END IF;
        END IF;
    END IF;

    IF ((run ->> 'items')::boolean OR (run ->> 'prune')::boolean)
       AND clock_timestamp() - (run ->> 'started')::timestamptz <= make_interval(secs => (run ->> 'max_seconds')::integer) THEN
        RETURN run;
    END IF;
    RETURN jsonb_build_object(
        'synced', run -> 'synced', 'failed', run -> 'failed', 'skipped', run -> 'skipped', 'pruned', run -> 'pruned',
        -- Items left marked (a run folds the marks of waiting items as it meets them) or due.
        'remaining', (SELECT count(*) FROM (
                          SELECT d.job_id, d.department FROM flex_sync_private.dirty d
                          UNION
                          SELECT r.job_id, r.department FROM flex_sync_private.retry_state r
                          WHERE NOT r.dead AND r.next_attempt_at <= moment) q),
        'duration_ms', round(extract(epoch FROM clock_timestamp() - (run ->> 'started')::timestamptz) * 1000))
        || CASE WHEN run ? 'paused_until' THEN jsonb_build_object('paused_until', run -> 'paused_until') ELSE '{}' END;
END
$$;

CREATE OR REPLACE FUNCTION flex_sync_pending(max_jobs integer DEFAULT 50, max_seconds integer DEFAULT 50,
                                  max_attempts integer DEFAULT 8)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    run jsonb := flex_sync_private.queue_run_start(max_jobs, max_seconds, max_attempts);
BEGIN
    LOOP
        run := flex_sync_private.queue_run_step(run);
        EXIT WHEN run ? 'remaining';
    END LOOP;
    RETURN run;
END
$$;

CREATE PROCEDURE flex_sync_run_queue(max_jobs integer DEFAULT 50, max_seconds integer DEFAULT 50,
                                     max_attempts integer DEFAULT 8, INOUT report jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $$
BEGIN
    report := flex_sync_private.queue_run_start(max_jobs, max_seconds, max_attempts);
    COMMIT;
    LOOP
        report := flex_sync_private.queue_run_step(report);
        COMMIT;
        EXIT WHEN pg_catalog.jsonb_exists(report, 'remaining');
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION flex_sync_requeue(p_job_id uuid DEFAULT NULL)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH revived AS (
        DELETE FROM flex_sync_private.retry_state
        WHERE dead AND (p_job_id IS NULL OR job_id = p_job_id)
        RETURNING job_id, department
    ), marked AS (
        INSERT INTO flex_sync_private.dirty (job_id, department)
        SELECT job_id, department FROM revived
        RETURNING 1
    )
    SELECT count(*)::integer FROM marked;
$$;

CREATE FUNCTION flex_sync_resume()
RETURNS timestamptz
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH pause AS (
        SELECT f.rate_limited_until FROM flex_sync_private.flex_state f WHERE f.rate_limited_until > now()
    ), cleared AS (
        UPDATE flex_sync_private.flex_state SET rate_limited_until = NULL WHERE rate_limited_until IS NOT NULL
    )
    SELECT rate_limited_until FROM pause;
$$;

CREATE OR REPLACE FUNCTION flex_dedupe_assignments(dry_run boolean DEFAULT false)
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

CREATE OR REPLACE VIEW flex_sync_queue AS
SELECT i.job_id, i.department, coalesce(m.marks, 0) AS marks,
       least(m.dirty_since, r.dirty_since) AS dirty_since,
       coalesce(r.attempts, 0) AS attempts, r.next_attempt_at, r.last_error, coalesce(r.dead, false) AS dead
FROM (SELECT job_id, department FROM flex_sync_private.dirty
      UNION
      SELECT job_id, department FROM flex_sync_private.retry_state) i
LEFT JOIN (SELECT job_id, department, count(*) AS marks, min(marked_at) AS dirty_since
           FROM flex_sync_private.dirty GROUP BY job_id, department) m USING (job_id, department)
LEFT JOIN flex_sync_private.retry_state r USING (job_id, department);

CREATE OR REPLACE VIEW flex_sync_health AS
SELECT count(*) AS syncs_24h,
       round(avg((status = 'ok')::int) * 100, 1) AS success_rate_pct,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       (SELECT count(*) FROM (SELECT job_id, department FROM flex_sync_private.dirty
                              UNION
                              SELECT job_id, department FROM flex_sync_private.retry_state WHERE NOT dead) q) AS queue_depth,
       (SELECT count(*) FROM flex_sync_private.retry_state WHERE dead) AS dead_items,
       (SELECT rate_limited_until FROM flex_sync_private.flex_state WHERE rate_limited_until > now()) AS paused_until,
       (SELECT 'flex_rate_limited'::text FROM flex_sync_private.flex_state WHERE rate_limited_until > now()) AS pause_reason
FROM flex_sync_log
WHERE started_at > now() - interval '24 hours' AND status <> 'skipped';

SELECT flex_sync_private.restrict_acls();
