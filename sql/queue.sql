-- The dirty-job queue: triggers mark (job, department) items, a scheduler syncs them.
--
-- Two tables hold an item's state. `dirty` has the marks: plain inserts by the triggers, so an
-- application write never waits for a running sync. `retry_state` has the items whose last sync
-- failed or was held: once an item has a row there, that row alone makes it due (at
-- next_attempt_at, or never while dead or held), and its marks are folded into it, so a run
-- never walks the marks of an item that is backing off or dead. A mark of a held item ends the
-- hold instead (its desired set may have changed): the item is synced again. Both are written
-- by a scheduler only while it holds the item's lock (a sync that ends clean also ends a hold).

-- The advisory lock of one item, shared by the sync (held for its transaction) and the queue: the
-- two-int form with classid 'FLXS', which applications using the one-bigint form can never
-- collide with; objid is a hash, so two items may share a lock and merely serialize.
CREATE FUNCTION flex_sync_private.item_lock(p_job_id uuid, p_department text, OUT classid integer, OUT objid integer)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT x'464C5853'::integer, hashtext(p_job_id::text || '/' || p_department);
$$;

CREATE TABLE flex_sync_private.dirty (
    mark_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid NOT NULL,
    department text NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dirty_item_idx ON flex_sync_private.dirty (job_id, department, mark_id);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.dirty', '');

-- dirty_since: when the oldest mark the item's failed syncs folded in was made. held_reason: the
-- guard held the item's deletes (next_attempt_at is infinity until a mark, a force or a clean
-- sync ends the hold).
CREATE TABLE flex_sync_private.retry_state (
    job_id          uuid NOT NULL,
    department      text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    dead            boolean NOT NULL DEFAULT false,
    dirty_since     timestamptz,
    held_reason     text,
    PRIMARY KEY (job_id, department)
);
-- Only the items that will be retried: a run finds the due ones without reading the dead.
CREATE INDEX retry_state_due_idx ON flex_sync_private.retry_state (next_attempt_at) WHERE NOT dead;
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.retry_state', '');

-- The last drift check of each crew call (flex_sync_drift, which lists the least recently
-- checked first); in_sync NULL when its listing failed.
CREATE TABLE flex_sync_private.drift_checks (
    crew_call_id uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    department   text NOT NULL,
    checked_at   timestamptz NOT NULL,
    in_sync      boolean,
    drift        jsonb NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.drift_checks', '');

CREATE FUNCTION flex_sync_private.mark_dirty(p_job_id uuid, p_department text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO flex_sync_private.dirty (job_id, department)
    SELECT c.job_id, lower(btrim(c.department)) FROM public.flex_crew_calls c
    WHERE c.job_id = p_job_id AND (p_department IS NULL OR lower(btrim(c.department)) = p_department);
$$;

-- Which jobs a change to a technician's profile (flex_resource_id, department) marks dirty: the
-- one overridable place (CREATE OR REPLACE FUNCTION, as desired_crew). Default: the jobs the
-- technician is assigned to that have not ended, when the application's jobs table has an
-- end_time column of a time type (the live app's has), soonest-ending first; without one, every job the
-- technician is on. At most 500 either way, so one profile edit stays a small write.
-- Whether the application's jobs table says when a job ends: an end_time column of a time type
-- (the live app's has one).
CREATE FUNCTION flex_sync_private.jobs_have_end_time()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_attribute a
                   WHERE a.attrelid = to_regclass('public.jobs') AND a.attname = 'end_time' AND NOT a.attisdropped
                     AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype));
$$;

CREATE FUNCTION flex_sync_private.jobs_to_mark_for_profile(p_technician_id uuid)
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

-- Which crew calls a drift check (flex_sync_drift) lists, in order: the one overridable place
-- (CREATE OR REPLACE FUNCTION, as desired_crew). Default: those of jobs that have not ended,
-- where the jobs table says when a job ends (every crew call without that), never checked
-- first, then the least recently checked.
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

CREATE FUNCTION flex_sync_private.on_assignment_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM flex_sync_private.mark_dirty(OLD.job_id, NULL);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND (TG_OP = 'INSERT' OR NEW.job_id IS DISTINCT FROM OLD.job_id) THEN
        PERFORM flex_sync_private.mark_dirty(NEW.job_id, NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION flex_sync_private.on_resource_change()
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

CREATE FUNCTION flex_sync_private.on_crew_call_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO flex_sync_private.dirty (job_id, department) VALUES (NEW.job_id, lower(btrim(NEW.department)));
    END IF;
    RETURN NULL;
END
$$;

-- Installs the queue's triggers on the application tables (they may not exist when the
-- extension is created). Idempotent.
CREATE FUNCTION flex_sync_enable_queue()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DROP TRIGGER IF EXISTS flex_sync_mark_dirty ON public.job_assignments;
    CREATE TRIGGER flex_sync_mark_dirty AFTER INSERT OR UPDATE OR DELETE ON public.job_assignments
        FOR EACH ROW EXECUTE FUNCTION flex_sync_private.on_assignment_change();
    DROP TRIGGER IF EXISTS flex_sync_mark_dirty ON public.profiles;
    CREATE TRIGGER flex_sync_mark_dirty AFTER UPDATE OF flex_resource_id, department ON public.profiles
        FOR EACH ROW WHEN (OLD.flex_resource_id IS DISTINCT FROM NEW.flex_resource_id
                           OR OLD.department IS DISTINCT FROM NEW.department)
        EXECUTE FUNCTION flex_sync_private.on_resource_change();
    DROP TRIGGER IF EXISTS flex_sync_mark_dirty ON public.flex_crew_calls;
    CREATE TRIGGER flex_sync_mark_dirty AFTER INSERT OR UPDATE ON public.flex_crew_calls
        FOR EACH ROW EXECUTE FUNCTION flex_sync_private.on_crew_call_change();
END
$$;

-- Deletes up to p_batch rows of flex_sync_log older than the option log_retention, oldest
-- first from p_after on, skipping rows another prune holds. Returns how many went and the
-- newest start among them: the next batch starts there, so it does not walk again the index
-- entries of rows deleted before (they stay until vacuum).
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

-- A run of the queue is a jsonb state handed from step to step, so that the function form and
-- the procedure pick, sync, back off and prune by the same code; the procedure commits between
-- steps. The steps are SECURITY DEFINER, so that a role the owner grants the procedure and them
-- needs nothing else. queue_run_start checks the limits and returns the first state.
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
        'synced', 0, 'failed', 0, 'skipped', 0, 'held', 0, 'pruned', 0);
END
$$;

-- One step: prune a batch of old log rows, then sync the next due item, if any. Due first are
-- items whose retry time has come; then items by their marks in the order they were marked,
-- walking the marks' primary key from where the last step stopped. A mark of an item with a
-- retry row is folded into that row (deleted) while the step holds the item's lock, which keeps
-- out a sync of the item (a sync that succeeds deletes the retry row, and would then lose a mark
-- folded meanwhile); an item whose lock is busy is passed over, its marks kept. At most
-- fold_limit marks are folded per step, so a step stays short. Each item syncs in its own
-- subtransaction; one another scheduler holds is skipped (its lock is busy), so two schedulers
-- never sync one item at once. After the sync only the marks read before it began go: a mark
-- committed later, even one with a smaller id, keeps the item due. Failures back off
-- exponentially with jitter; after max_attempts the item is dead until flex_sync_requeue(). A
-- sync the guard held leaves the item held: not retried, until a mark ends the hold.
-- While Flex's hourly budget is known to be spent nothing is synced (the run reports
-- paused_until). Returns the next state, or the run's report (it has the key "remaining") when
-- the run is over.
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

-- The queue in one transaction: for callers that need the result inside their own transaction.
-- Each synced item keeps its lock, rows and log row to itself until that transaction ends, so
-- an interactive sync of an item this run did waits for the whole run: schedule
-- flex_sync_run_queue() instead. Returns the run's report.
CREATE FUNCTION flex_sync_pending(max_jobs integer DEFAULT 50, max_seconds integer DEFAULT 50,
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

-- The queue for schedulers (pg_cron runs CALL): the same steps, committing after each, so an
-- item's lock, rows and log row are released and visible as soon as it is done. Refused inside a
-- transaction block (2D000) before anything is synced. A procedure that commits can be neither
-- SECURITY DEFINER nor carry SET search_path, so it runs as its caller and names everything with
-- its schema; its steps run as the owner.
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

-- Dead items back in the queue, marked anew: one job, or all with NULL. Returns how many.
CREATE FUNCTION flex_sync_requeue(p_job_id uuid DEFAULT NULL)
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

-- Ends the pause a spent hourly budget (Flex's 429) put on every sync, for an operator who
-- knows the budget is back. Returns when the pause would have ended, NULL if there was none.
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
