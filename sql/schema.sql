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
    flex_line_item_id uuid PRIMARY KEY,
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
    status       text NOT NULL CHECK (status IN ('ok', 'partial', 'failed', 'skipped', 'held')),
    errors       jsonb NOT NULL DEFAULT '[]',
    summary      jsonb NOT NULL DEFAULT '{}',
    triggered_by text NOT NULL
);
-- The last sync of one crew call, newest first, ties broken by id (flex_sync_last_sync).
CREATE INDEX flex_sync_log_job_idx ON flex_sync_log (job_id, department, started_at DESC, id DESC);
-- The health views' 24 hours, and the retention prune's oldest rows (option log_retention).
CREATE INDEX flex_sync_log_started_idx ON flex_sync_log (started_at);
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

-- The unique indexes on flex_crew_assignments (crew_call_id, technician_id), whatever their names:
-- unique, valid (not left half-built, nor a partitioned table's index not yet on every
-- partition), on exactly those two key columns (INCLUDE columns allowed), without predicate or
-- expression; none when the table has none. One SQL query without a SET clause, so that the
-- planner inlines it into the sync's first statement (check_call.sql).
CREATE FUNCTION flex_sync_private.pair_unique_indexes()
RETURNS TABLE (index_name name, immediate boolean)
LANGUAGE sql STABLE
AS $$
    SELECT c.relname, i.indimmediate
    FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = pg_catalog.to_regclass('public.flex_crew_assignments')
      AND i.indisunique AND i.indisvalid
      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2
      AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum IN (i.indkey[0], i.indkey[1])
             AND a.attname IN ('crew_call_id', 'technician_id')) = 2
$$;

-- The one of them ON CONFLICT (crew_call_id, technician_id) can use; NULL when there is none: the
-- sync refuses to run without one, the dedupe makes it. A deferrable one is refused here, for
-- the sync and the dedupe alike: ON CONFLICT refuses every arbiter once one of them is
-- deferrable, so no index added beside it would help.
CREATE FUNCTION flex_sync_private.pair_unique_index()
RETURNS name
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found      name;
    usable     boolean;
BEGIN
    SELECT u.index_name, u.immediate INTO found, usable
    FROM flex_sync_private.pair_unique_indexes() u
    ORDER BY u.immediate, u.index_name
    LIMIT 1;
    IF NOT usable THEN
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
-- One SQL query without a SET clause, which the planner inlines into the sync's read of the crew
-- call (load_crew.sql); it runs inside flex_sync_job, whose search_path is pinned, and names every
-- table with its schema.
CREATE FUNCTION flex_sync_private.desired_crew(p_job_id uuid, p_department text)
RETURNS TABLE (technician_id uuid, flex_resource_id text, role_code text)
LANGUAGE sql STABLE
AS $$
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
               AND lower(btrim(p.department)) = p_department))
$$;

-- A Supabase Vault secret by name; NULL without Vault or without the secret.
CREATE FUNCTION flex_sync_private.vault_secret(p_name text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found text;
BEGIN
    IF to_regclass('vault.decrypted_secrets') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 LIMIT 1' INTO found USING p_name;
    RETURN found;
END
$$;

-- The settings a sync runs with, one row (NULLs where flex_sync is not configured). The token is
-- read at call time from the Supabase Vault secret the option api_token_vault_secret names;
-- without that option, from the token stored by flex_sync_configure, else from the Vault secret
-- 'flex_api_token' where Vault is installed. One SQL query without a SET clause, so that the
-- planner inlines it into the sync's call_context.sql; Vault is read only when it is needed. The
-- token is a sub-select, not a join: the two one-row tables are never analyzed, and a join of
-- their default estimates (800 x 1,330 rows) costs enough for JIT to compile it on every call.
CREATE FUNCTION flex_sync_private.effective_settings()
RETURNS TABLE (base_url text, api_token text, options jsonb)
LANGUAGE sql STABLE
AS $$
    SELECT s.base_url,
           coalesce(CASE WHEN s.options ->> 'api_token_vault_secret' IS NULL
                         THEN (SELECT t.api_token FROM flex_sync_private.api_token t) END,
                    flex_sync_private.vault_secret(coalesce(s.options ->> 'api_token_vault_secret', 'flex_api_token'))),
           s.options
    FROM (VALUES (1)) AS one (n) LEFT JOIN flex_sync_private.settings s ON true
$$;

-- Creates the application tables the sync reads and writes where they are missing. They are not
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
BEGIN
    IF caller = 'anon' THEN
        RAISE EXCEPTION 'flex_sync: anonymous callers may not sync'
            USING ERRCODE = 'insufficient_privilege', HINT = 'sign in as an admin or management user';
    END IF;
    -- The role is tested on its own: in one expression joined by AND, the plan cache would plan
    -- the sub-select again on every call of any other caller (a custom plan folds it away, so it
    -- always looks cheaper than the generic one).
    IF caller = 'authenticated' THEN
        IF NOT EXISTS (
            SELECT 1 FROM public.profiles p
            WHERE p.id::text = nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
              AND p.role IN ('admin', 'management')
        ) THEN
            RAISE EXCEPTION 'flex_sync: only admin or management users may sync'
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'the profile of the signed-in user needs role admin or management';
        END IF;
    END IF;
END
$$;
