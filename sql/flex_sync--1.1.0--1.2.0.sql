-- flex_sync 1.1.0 to 1.2.0: the preview (flex_sync_plan), the guard against mass deletion
-- (option max_delete_fraction, status "held", flex_sync_job(..., force => true), held items in the
-- queue and its views) and the drift check (flex_sync_drift, flex_sync_drift_status).
-- Objects are created exactly as a fresh 1.2.0 install creates them.

ALTER TABLE flex_sync_private.retry_state ADD COLUMN held_reason text;

-- A sync the guard held logs status held.
ALTER TABLE flex_sync_log DROP CONSTRAINT flex_sync_log_status_check,
    ADD CONSTRAINT flex_sync_log_status_check CHECK (status IN ('ok', 'partial', 'failed', 'skipped', 'held'));

CREATE TABLE flex_sync_private.drift_checks (
    crew_call_id uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    department   text NOT NULL,
    checked_at   timestamptz NOT NULL,
    in_sync      boolean,
    drift        jsonb NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.drift_checks', '');

CREATE FUNCTION flex_sync_private.jobs_have_end_time()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_attribute a
                   WHERE a.attrelid = to_regclass('public.jobs') AND a.attname = 'end_time' AND NOT a.attisdropped
                     AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype));
$$;

CREATE FUNCTION flex_sync_private.crew_calls_to_check(p_limit integer)
RETURNS TABLE (job_id uuid, department text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF flex_sync_private.jobs_have_end_time() THEN
        RETURN QUERY EXECUTE
            'SELECT c.job_id, lower(btrim(c.department)) FROM public.flex_crew_calls c
             JOIN public.jobs j ON j.id = c.job_id
             LEFT JOIN flex_sync_private.drift_checks d ON d.crew_call_id = c.id
             WHERE j.end_time IS NULL OR j.end_time >= now()
             ORDER BY d.checked_at NULLS FIRST, c.id LIMIT $1'
            USING p_limit;
    ELSE
        RETURN QUERY
        SELECT c.job_id, lower(btrim(c.department)) FROM public.flex_crew_calls c
        LEFT JOIN flex_sync_private.drift_checks d ON d.crew_call_id = c.id
        ORDER BY d.checked_at NULLS FIRST, c.id LIMIT p_limit;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION flex_sync_private.jobs_to_mark_for_profile(p_technician_id uuid)
RETURNS SETOF uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF flex_sync_private.jobs_have_end_time() THEN
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

CREATE OR REPLACE FUNCTION flex_sync_private.queue_run_start(max_jobs integer, max_seconds integer, max_attempts integer)
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
        'synced', 0, 'failed', 0, 'skipped', 0, 'held', 0, 'pruned', 0);
END
$$;

CREATE OR REPLACE FUNCTION flex_sync_private.queue_run_step(run jsonb)
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
    held        text;
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
                -- is seen whole or not at all. A held item's row goes and its marks stay.
                WITH retry AS (
                    SELECT r.held_reason IS NOT NULL AS held FROM flex_sync_private.retry_state r
                    WHERE r.job_id = item.job_id AND r.department = item.department
                ), released AS (
                    DELETE FROM flex_sync_private.retry_state r
                    WHERE r.job_id = item.job_id AND r.department = item.department AND r.held_reason IS NOT NULL
                    RETURNING 1
                ), folded AS (
                    DELETE FROM flex_sync_private.dirty d
                    WHERE d.job_id = item.job_id AND d.department = item.department
                      AND EXISTS (SELECT 1 FROM retry WHERE NOT retry.held)
                    RETURNING 1
                )
                SELECT EXISTS (SELECT 1 FROM retry WHERE NOT retry.held) INTO waiting;
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
        held := NULL;
        BEGIN
            result := @extschema@.flex_sync_job(item.job_id, ARRAY[item.department], false);
            status := result -> 'summary' -> item.department ->> 'status';
            IF status = 'held' THEN
                held := coalesce((result -> 'summary' -> item.department -> 'held' ->> 'reason') || ': '
                                 || (result -> 'summary' -> item.department -> 'held' ->> 'note'), 'held');
            ELSIF status IN ('failed', 'partial') THEN
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
            IF held IS NOT NULL THEN
                run := run || jsonb_build_object('held', (run ->> 'held')::integer + 1);
                INSERT INTO flex_sync_private.retry_state AS r
                       (job_id, department, attempts, next_attempt_at, last_error, held_reason, dirty_since)
                VALUES (item.job_id, item.department, 0, 'infinity', held, held, coalesce(since, moment))
                ON CONFLICT (job_id, department) DO UPDATE
                SET attempts = 0, next_attempt_at = 'infinity', last_error = EXCLUDED.last_error, dead = false,
                    held_reason = EXCLUDED.held_reason, dirty_since = least(r.dirty_since, EXCLUDED.dirty_since);
            ELSIF failure IS NULL THEN
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
                    held_reason = NULL,
                    dirty_since = least(r.dirty_since, EXCLUDED.dirty_since);
            END IF;
        END IF;
    END IF;

    IF ((run ->> 'items')::boolean OR (run ->> 'prune')::boolean)
       AND clock_timestamp() - (run ->> 'started')::timestamptz <= make_interval(secs => (run ->> 'max_seconds')::integer) THEN
        RETURN run;
    END IF;
    RETURN jsonb_build_object(
        'synced', run -> 'synced', 'failed', run -> 'failed', 'skipped', run -> 'skipped', 'held', run -> 'held',
        'pruned', run -> 'pruned',
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

CREATE OR REPLACE FUNCTION flex_sync_private.intended_grants()
RETURNS TABLE (object text, grantee name, privilege text)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    VALUES ('@extschema@.flex_sync_job(uuid,text[],boolean,boolean)', 'authenticated'::name, 'EXECUTE'),
           ('@extschema@.flex_sync_job(uuid,text[],boolean,boolean)', 'service_role'::name, 'EXECUTE'),
           ('@extschema@.flex_sync_plan(uuid,text[])', 'authenticated'::name, 'EXECUTE'),
           ('@extschema@.flex_sync_plan(uuid,text[])', 'service_role'::name, 'EXECUTE');
$$;

CREATE OR REPLACE VIEW flex_sync_queue AS
SELECT i.job_id, i.department, coalesce(m.marks, 0) AS marks,
       least(m.dirty_since, r.dirty_since) AS dirty_since,
       coalesce(r.attempts, 0) AS attempts, r.next_attempt_at, r.last_error, coalesce(r.dead, false) AS dead,
       r.held_reason IS NOT NULL AS held
FROM (SELECT job_id, department FROM flex_sync_private.dirty
      UNION
      SELECT job_id, department FROM flex_sync_private.retry_state) i
LEFT JOIN (SELECT job_id, department, count(*) AS marks, min(marked_at) AS dirty_since
           FROM flex_sync_private.dirty GROUP BY job_id, department) m USING (job_id, department)
LEFT JOIN flex_sync_private.retry_state r USING (job_id, department);

CREATE VIEW flex_sync_held_items AS
SELECT job_id, department, held_reason, dirty_since FROM flex_sync_private.retry_state WHERE held_reason IS NOT NULL;

-- A column in the middle: the view is made again.
DROP VIEW flex_sync_health;
CREATE VIEW flex_sync_health AS
SELECT count(*) AS syncs_24h,
       round(avg((status = 'ok')::int) * 100, 1) AS success_rate_pct,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       (SELECT count(*) FROM (SELECT job_id, department FROM flex_sync_private.dirty
                              UNION
                              SELECT job_id, department FROM flex_sync_private.retry_state
                              WHERE NOT dead AND held_reason IS NULL) q) AS queue_depth,
       (SELECT count(*) FROM flex_sync_private.retry_state WHERE dead) AS dead_items,
       (SELECT count(*) FROM flex_sync_private.retry_state WHERE held_reason IS NOT NULL) AS held_items,
       (SELECT rate_limited_until FROM flex_sync_private.flex_state WHERE rate_limited_until > now()) AS paused_until,
       (SELECT 'flex_rate_limited'::text FROM flex_sync_private.flex_state WHERE rate_limited_until > now()) AS pause_reason
FROM flex_sync_log
WHERE started_at > now() - interval '24 hours' AND status <> 'skipped';

CREATE VIEW flex_sync_drift_status AS
SELECT crew_call_id, job_id, department, checked_at, in_sync,
       jsonb_array_length(drift -> 'missing') AS missing, jsonb_array_length(drift -> 'extra') AS extra,
       jsonb_array_length(drift -> 'duplicated') AS duplicated, jsonb_array_length(drift -> 'wrong_role') AS wrong_role,
       jsonb_array_length(drift -> 'rows') AS rows_astray, drift
FROM flex_sync_private.drift_checks;

-- flex_sync_job gains force: the function is made again with the new argument.
DROP FUNCTION flex_sync_job(uuid, text[], boolean);

CREATE  FUNCTION "flex_sync_job"(
	"job_id" uuid,
	"departments" TEXT[] DEFAULT NULL,
	"wait_for_lock" bool DEFAULT true,
	"force" bool DEFAULT false
) RETURNS jsonb
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'flex_sync_job_wrapper';

CREATE  FUNCTION "flex_sync_plan"(
	"job_id" uuid,
	"departments" TEXT[] DEFAULT NULL
) RETURNS jsonb
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'flex_sync_plan_wrapper';

CREATE  FUNCTION "flex_sync_drift"(
	"max_crew_calls" INT DEFAULT 50
) RETURNS jsonb
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'flex_sync_drift_wrapper';

SELECT flex_sync_private.restrict_acls();
