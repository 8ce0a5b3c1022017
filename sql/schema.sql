-- flex_sync: the extension's own tables and its SQL-level functions.
-- Application tables (jobs, profiles, job_assignments, flex_crew_calls, flex_crew_assignments)
-- are not created here: they belong to the application, see flex_sync_install_reference_schema().

-- Private state: settings, the Flex token and what the sync knows about Flex lines.
-- No caller role can reach this schema (sql/grants.sql); only the extension's SECURITY DEFINER
-- functions do.
CREATE SCHEMA flex_sync_private;

-- The endpoint and options survive pg_dump; the token does not (below).
CREATE TABLE flex_sync_private.settings (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    base_url    text NOT NULL,
    options     jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.settings', '');

-- The token given to flex_sync_configure. Not marked for dumping: an extension table's rows reach
-- a dump only when marked, so no pg_dump (schema or data) holds it; after a restore, configure the
-- token again or keep it in Supabase Vault. Readable by the owner alone, like the whole schema.
CREATE TABLE flex_sync_private.api_token (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    api_token  text NOT NULL
);

-- What the extension has learnt about the Flex customer: until when its hourly budget is spent.
CREATE TABLE flex_sync_private.flex_state (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rate_limited_until timestamptz
);

-- One row per Flex contact line the sync has made or adopted: whether the sync created it (the
-- orphan_policy 'keep' may delete only those) and the business role last applied to it (so an
-- unchanged role is not sent again).
CREATE TABLE flex_sync_private.lines (
    flex_line_item_id text PRIMARY KEY,
    flex_element_id   uuid NOT NULL,
    resource_id       text NOT NULL,
    created_by_sync   boolean NOT NULL,
    applied_role      text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lines_element_idx ON flex_sync_private.lines (flex_element_id);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.lines', '');

-- Business roles: department and tier (last segment of the role code) to a Flex business-role id.
-- Ids are tenant dictionary UUIDs; the sound ones are those confirmed for the live tenant.
CREATE TABLE flex_sync_business_roles (
    department       text NOT NULL CHECK (department = lower(btrim(department)) AND department <> ''),
    tier             text NOT NULL CHECK (tier IN ('R', 'E', 'T')),
    business_role_id text NOT NULL,
    seeded           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (department, tier)
);
INSERT INTO flex_sync_business_roles (department, tier, business_role_id, seeded) VALUES
    ('sound', 'R', '2916b300-c515-11ea-a087-2a0a4490a7fb', true),
    ('sound', 'E', 'b18a5bcc-59fa-4956-917f-0d1816d7d9b3', true),
    ('sound', 'T', '2f6cf050-c5c1-11ea-a087-2a0a4490a7fb', true);
-- Rows a DBA adds survive pg_dump; the seeded ones come back with CREATE EXTENSION.
SELECT pg_catalog.pg_extension_config_dump('flex_sync_business_roles', 'WHERE NOT seeded');

-- What every sync did: one row per department per call. Never holds a token.
CREATE TABLE flex_sync_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       uuid NOT NULL,
    department   text NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  integer NOT NULL,
    added        integer NOT NULL DEFAULT 0,
    removed      integer NOT NULL DEFAULT 0,
    kept         integer NOT NULL DEFAULT 0,
    roles_set    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    flex_calls   integer NOT NULL DEFAULT 0,
    status       text NOT NULL CHECK (status IN ('ok', 'partial', 'failed', 'skipped')),
    errors       jsonb NOT NULL DEFAULT '[]',
    summary      jsonb NOT NULL DEFAULT '{}',
    triggered_by text NOT NULL
);
CREATE INDEX flex_sync_log_job_idx ON flex_sync_log (job_id, department, started_at DESC);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_log', '');
SELECT pg_catalog.pg_extension_config_dump('flex_sync_log_id_seq', '');

-- The effective Flex settings, token masked: what a DBA looks at.
CREATE VIEW flex_sync_settings AS
SELECT s.base_url,
       CASE WHEN t.api_token IS NULL THEN NULL ELSE '********' END AS api_token,
       s.options,
       s.updated_at
FROM flex_sync_private.settings s
LEFT JOIN flex_sync_private.api_token t ON true;

-- The unique index on flex_crew_assignments (crew_call_id, technician_id), whatever its name:
-- unique, valid (not left half-built, nor a partitioned table's index not yet on every
-- partition), on exactly those two key columns (INCLUDE columns allowed), without predicate or
-- expression. NULL when there is none: the sync refuses to run without one, the dedupe makes it.
-- A deferrable one is refused here, for the sync and the dedupe alike: ON CONFLICT refuses every
-- arbiter once one of them is deferrable, so no index added beside it would help.
CREATE FUNCTION flex_sync_private.pair_unique_index()
RETURNS name
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found      name;
    immediate  boolean;
BEGIN
    SELECT c.relname, i.indimmediate INTO found, immediate
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = to_regclass('public.flex_crew_assignments')
      AND i.indisunique AND i.indisvalid
      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
           FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE k.position <= i.indnkeyatts) = ARRAY['crew_call_id', 'technician_id']
    ORDER BY i.indimmediate, c.relname
    LIMIT 1;
    IF NOT immediate THEN
        RAISE EXCEPTION 'the unique constraint % on flex_crew_assignments (crew_call_id, technician_id) is deferrable', found
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'INSERT ... ON CONFLICT cannot use a deferrable constraint: replace it, e.g. ALTER TABLE '
                         'flex_crew_assignments DROP CONSTRAINT <name>, ADD UNIQUE (crew_call_id, technician_id)';
    END IF;
    RETURN found;
END
$$;

-- Who should be on a department's crew call: the one place that defines it.
-- Default: a non-empty flex_resource_id, an assignment that is not declined, and either a role
-- for the department or no role at all and the profile's department equal to it.
-- Replace it with CREATE OR REPLACE FUNCTION to change the rule (README: "confirmed only").
CREATE FUNCTION flex_sync_private.desired_crew(p_job_id uuid, p_department text)
RETURNS TABLE (technician_id uuid, flex_resource_id text, role_code text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT ja.technician_id, btrim(p.flex_resource_id), r.role_code
    FROM public.job_assignments ja
    JOIN public.profiles p ON p.id = ja.technician_id
    CROSS JOIN LATERAL (
        SELECT nullif(btrim(CASE p_department
                                WHEN 'sound' THEN ja.sound_role
                                WHEN 'lights' THEN ja.lights_role
                                WHEN 'video' THEN ja.video_role
                            END), '') AS role_code
    ) r
    WHERE ja.job_id = p_job_id
      AND coalesce(btrim(p.flex_resource_id), '') <> ''
      AND ja.status::text IS DISTINCT FROM 'declined'
      AND (r.role_code IS NOT NULL
           OR (ja.sound_role IS NULL AND ja.lights_role IS NULL AND ja.video_role IS NULL
               AND lower(btrim(p.department)) = p_department));
END
$$;

-- The settings a sync runs with. The token is read at call time from the Supabase Vault secret
-- the option api_token_vault_secret names; without that option, from the token stored by
-- flex_sync_configure, else from the Vault secret 'flex_api_token' where Vault is installed.
CREATE FUNCTION flex_sync_private.effective_settings(OUT base_url text, OUT api_token text, OUT options jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret text;
BEGIN
    SELECT s.base_url, s.options INTO base_url, options FROM flex_sync_private.settings s;
    secret := options ->> 'api_token_vault_secret';
    IF secret IS NULL THEN
        SELECT t.api_token INTO api_token FROM flex_sync_private.api_token t;
        secret := 'flex_api_token';
    END IF;
    IF api_token IS NULL AND to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
        EXECUTE 'SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 LIMIT 1'
            INTO api_token USING secret;
    END IF;
END
$$;

-- Creates the application tables of DESIGN.md section 3 where they are missing. They are not
-- members of the extension: DROP EXTENSION flex_sync never drops application data.
CREATE FUNCTION flex_sync_install_reference_schema()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CREATE TABLE IF NOT EXISTS public.jobs (
        id    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        title text
    );
    CREATE TABLE IF NOT EXISTS public.profiles (
        id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        first_name       text,
        last_name        text,
        department       text,
        role             text,
        flex_resource_id text
    );
    CREATE TABLE IF NOT EXISTS public.job_assignments (
        id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        job_id        uuid NOT NULL REFERENCES public.jobs (id) ON DELETE CASCADE,
        technician_id uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
        sound_role    text,
        lights_role   text,
        video_role    text,
        status        text NOT NULL DEFAULT 'invited' CHECK (status IN ('invited', 'confirmed', 'declined')),
        UNIQUE (job_id, technician_id)
    );
    CREATE TABLE IF NOT EXISTS public.flex_crew_calls (
        id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        job_id          uuid NOT NULL REFERENCES public.jobs (id) ON DELETE CASCADE,
        department      text NOT NULL,
        flex_element_id uuid NOT NULL,
        UNIQUE (job_id, department)
    );
    CREATE TABLE IF NOT EXISTS public.flex_crew_assignments (
        id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        crew_call_id      uuid NOT NULL REFERENCES public.flex_crew_calls (id) ON DELETE CASCADE,
        technician_id     uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
        flex_line_item_id uuid NOT NULL,
        created_at        timestamptz DEFAULT now(),
        UNIQUE (crew_call_id, technician_id)
    );
END
$$;

-- Who may sync through a Supabase frontend: the one overridable place. Called by flex_sync_job
-- (SECURITY DEFINER) before anything is read or sent. `current_setting('role')` is the role
-- PostgREST switched to with SET LOCAL ROLE; callers that did not switch are judged by the
-- EXECUTE grant alone. Default, as the live app: anon never; authenticated only when the JWT
-- subject's profile role is admin or management.
CREATE FUNCTION flex_sync_private.authorize()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller text := nullif(current_setting('role'), 'none');
    subject text := nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub';
BEGIN
    IF caller = 'anon' THEN
        RAISE EXCEPTION 'flex_sync: anonymous callers may not sync'
            USING ERRCODE = 'insufficient_privilege', HINT = 'sign in as an admin or management user';
    END IF;
    IF caller = 'authenticated' AND NOT EXISTS (
        SELECT 1 FROM public.profiles p
        WHERE p.id::text = subject AND p.role IN ('admin', 'management')
    ) THEN
        RAISE EXCEPTION 'flex_sync: only admin or management users may sync'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'the profile of the signed-in user needs role admin or management';
    END IF;
END
$$;

-- The dirty-job queue. Triggers append marks (plain inserts, so an application write never waits
-- for a running sync); flex_sync_pending() syncs each due (job, department) and then deletes the
-- marks it saw, so a mark made during the sync keeps the item due.
CREATE TABLE flex_sync_private.dirty (
    mark_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid NOT NULL,
    department text NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dirty_item_idx ON flex_sync_private.dirty (job_id, department, mark_id);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.dirty', '');

-- Retry state per item, written only by the scheduler that holds the item's advisory lock.
CREATE TABLE flex_sync_private.retry_state (
    job_id          uuid NOT NULL,
    department      text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    dead            boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, department)
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.retry_state', '');

CREATE FUNCTION flex_sync_private.mark_dirty(p_job_id uuid, p_department text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO flex_sync_private.dirty (job_id, department)
    SELECT c.job_id, lower(btrim(c.department)) FROM public.flex_crew_calls c
    WHERE c.job_id = p_job_id AND (p_department IS NULL OR lower(btrim(c.department)) = p_department);
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
    PERFORM flex_sync_private.mark_dirty(ja.job_id, NULL)
    FROM public.job_assignments ja WHERE ja.technician_id = NEW.id;
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

-- Syncs due queue items until max_jobs are done or max_seconds have passed. Items are taken in
-- the order they were first marked, walking the marks' primary key from where the last item was
-- found, so picking items reads only the marks it needs however long the queue is (the count of
-- what remains, in the result, reads it all). Each item runs in its
-- own subtransaction; an item another scheduler holds is skipped (its advisory lock is busy), so
-- two schedulers never sync one item at once. After a sync, only the marks read before it started
-- are cleared: a mark committed later, even one with a smaller id, keeps the item due. Failures
-- back off exponentially with jitter; after max_attempts an item is dead until flex_sync_requeue().
CREATE FUNCTION flex_sync_pending(max_jobs integer DEFAULT 50, max_seconds integer DEFAULT 50,
                                  max_attempts integer DEFAULT 8)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
            result := @extschema@.flex_sync_job(item.job_id, ARRAY[item.department], false);
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

-- Dead items back in the queue: one job, or all with NULL.
CREATE FUNCTION flex_sync_requeue(p_job_id uuid DEFAULT NULL)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH revived AS (
        DELETE FROM flex_sync_private.retry_state
        WHERE dead AND (p_job_id IS NULL OR job_id = p_job_id)
        RETURNING 1
    )
    SELECT count(*)::integer FROM revived;
$$;

-- Observability.
CREATE VIEW flex_sync_queue AS
SELECT d.job_id, d.department, count(*) AS marks, min(d.marked_at) AS dirty_since,
       coalesce(r.attempts, 0) AS attempts, r.next_attempt_at, r.last_error, coalesce(r.dead, false) AS dead
FROM flex_sync_private.dirty d
LEFT JOIN flex_sync_private.retry_state r USING (job_id, department)
GROUP BY d.job_id, d.department, r.attempts, r.next_attempt_at, r.last_error, r.dead;

CREATE VIEW flex_sync_dead_items AS
SELECT job_id, department, attempts, last_error FROM flex_sync_private.retry_state WHERE dead;

CREATE VIEW flex_sync_last_sync AS
SELECT DISTINCT ON (job_id, department) job_id, department, started_at, status, added, removed, kept,
       roles_set, failed, flex_calls, duration_ms, errors, triggered_by
FROM flex_sync_log
ORDER BY job_id, department, started_at DESC, id DESC;

CREATE VIEW flex_sync_health AS
SELECT count(*) AS syncs_24h,
       round(avg((status = 'ok')::int) * 100, 1) AS success_rate_pct,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms,
       (SELECT count(DISTINCT (job_id, department)) FROM flex_sync_private.dirty) AS queue_depth,
       (SELECT count(*) FROM flex_sync_private.retry_state WHERE dead) AS dead_items
FROM flex_sync_log
WHERE started_at > now() - interval '24 hours' AND status <> 'skipped';

CREATE VIEW flex_sync_recent_failures AS
SELECT split_part(e.value, ':', 1) AS error_code, count(*) AS occurrences, max(l.started_at) AS last_seen,
       (array_agg(l.job_id ORDER BY l.started_at DESC))[1] AS last_job_id
FROM flex_sync_log l, jsonb_array_elements_text(l.errors) e
WHERE l.started_at > now() - interval '24 hours'
GROUP BY 1;
