-- flex_sync 0.1.0: the extension's own tables and its SQL-level functions.
-- Application tables (jobs, profiles, job_assignments, flex_crew_calls, flex_crew_assignments)
-- are not created here: they belong to the application, see flex_sync_install_reference_schema().

-- Private state: settings (with the Flex token) and what the sync knows about Flex lines.
-- No caller role can read this schema; only the extension's SECURITY DEFINER functions do.
CREATE SCHEMA flex_sync_private;
REVOKE ALL ON SCHEMA flex_sync_private FROM PUBLIC;

CREATE TABLE flex_sync_private.settings (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    base_url    text NOT NULL,
    api_token   text,
    options     jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.settings', '');

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
SELECT base_url,
       CASE WHEN api_token IS NULL THEN NULL ELSE '********' END AS api_token,
       options,
       updated_at
FROM flex_sync_private.settings;
REVOKE ALL ON flex_sync_settings FROM PUBLIC;

-- Who should be on a department's crew call: the one place that defines it.
-- Default: a non-empty flex_resource_id, an assignment that is not declined, and either a role
-- for the department or no role at all and the profile's department equal to it.
-- Replace it with CREATE OR REPLACE FUNCTION to change the rule (README: "confirmed only").
CREATE FUNCTION flex_sync_desired_crew(p_job_id uuid, p_department text)
RETURNS TABLE (technician_id uuid, flex_resource_id text, role_code text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT ja.technician_id, btrim(p.flex_resource_id), r.role_code
    FROM job_assignments ja
    JOIN profiles p ON p.id = ja.technician_id
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

-- The settings a sync runs with. The token comes from the settings table, or, where Supabase
-- Vault is installed and no token was configured, from the Vault secret 'flex_api_token'.
CREATE FUNCTION flex_sync_private.effective_settings(OUT base_url text, OUT api_token text, OUT options jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT s.base_url, s.api_token, s.options INTO base_url, api_token, options
    FROM flex_sync_private.settings s;
    IF api_token IS NULL AND to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
        EXECUTE 'SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 LIMIT 1'
            INTO api_token USING 'flex_api_token';
    END IF;
END
$$;

-- Creates the application tables of DESIGN.md section 3 where they are missing. They are not
-- members of the extension: DROP EXTENSION flex_sync never drops application data.
CREATE FUNCTION flex_sync_install_reference_schema()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
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

-- Rows removed by flex_dedupe_assignments(), one batch per run: nothing a dedupe removes is lost.
CREATE TABLE flex_dedupe_audit (
    batch_id          uuid NOT NULL,
    removed_at        timestamptz NOT NULL,
    crew_call_id      uuid NOT NULL,
    technician_id     uuid NOT NULL,
    flex_line_item_id text,
    kept_row          jsonb NOT NULL,
    removed_row       jsonb NOT NULL
);
CREATE INDEX flex_dedupe_audit_batch_idx ON flex_dedupe_audit (batch_id);
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
AS $$
DECLARE
    batch        uuid := CASE WHEN dry_run THEN NULL ELSE gen_random_uuid() END;
    existing     text;
    groups       bigint;
    doomed       bigint;
    removed      bigint := 0;
    orphaned     jsonb;
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

    CREATE TEMP TABLE flex_dedupe_doomed ON COMMIT DROP AS
    SELECT r.tid, r.crew_call_id, r.technician_id, r.flex_line_item_id, r.removed_row, r.kept_row
    FROM (
        SELECT a.ctid AS tid, a.crew_call_id, a.technician_id, a.flex_line_item_id::text AS flex_line_item_id,
               to_jsonb(a) AS removed_row,
               first_value(to_jsonb(a)) OVER w AS kept_row,
               row_number() OVER w AS rn
        FROM public.flex_crew_assignments a
        WINDOW w AS (PARTITION BY a.crew_call_id, a.technician_id ORDER BY a.created_at ASC NULLS LAST, a.id)
    ) r
    WHERE r.rn > 1;

    SELECT count(*), count(DISTINCT (crew_call_id, technician_id)) INTO doomed, groups FROM flex_dedupe_doomed;

    -- Line ids only removed rows referenced: Flex contacts no row will account for any more.
    SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object(
               'crew_call_id', d.crew_call_id, 'flex_element_id', c.flex_element_id,
               'flex_line_item_id', d.flex_line_item_id)), '[]')
    INTO orphaned
    FROM flex_dedupe_doomed d
    JOIN public.flex_crew_calls c ON c.id = d.crew_call_id
    WHERE d.flex_line_item_id IS NOT NULL
      AND d.flex_line_item_id <> coalesce(d.kept_row ->> 'flex_line_item_id', '')
      AND NOT EXISTS (SELECT 1 FROM public.flex_crew_assignments a
                      WHERE a.flex_line_item_id::text = d.flex_line_item_id
                        AND a.ctid NOT IN (SELECT tid FROM flex_dedupe_doomed));

    IF dry_run THEN
        constraint_state := CASE WHEN existing IS NULL THEN 'would_create' ELSE 'existed' END;
        DROP TABLE flex_dedupe_doomed;
        RETURN jsonb_build_object('dry_run', true, 'duplicate_groups', groups, 'rows_removed', 0,
                                  'rows_to_remove', doomed, 'constraint', constraint_state,
                                  'constraint_name', existing, 'audit_batch', NULL,
                                  'orphaned_flex_lines', orphaned);
    END IF;

    INSERT INTO flex_dedupe_audit (batch_id, removed_at, crew_call_id, technician_id, flex_line_item_id, kept_row, removed_row)
    SELECT batch, now(), crew_call_id, technician_id, flex_line_item_id, kept_row, removed_row FROM flex_dedupe_doomed;

    DELETE FROM public.flex_crew_assignments a USING flex_dedupe_doomed d WHERE a.ctid = d.tid;
    GET DIAGNOSTICS removed = ROW_COUNT;

    -- Marked as the sync's own, so the next flex_sync_job removes these contacts in Flex even
    -- under orphan_policy 'keep'.
    INSERT INTO flex_sync_private.lines (flex_line_item_id, flex_element_id, resource_id, created_by_sync)
    SELECT o ->> 'flex_line_item_id', (o ->> 'flex_element_id')::uuid, '', true
    FROM jsonb_array_elements(orphaned) o
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
    DROP TABLE flex_dedupe_doomed;
    RETURN jsonb_build_object('dry_run', false, 'duplicate_groups', groups, 'rows_removed', removed,
                              'constraint', constraint_state, 'constraint_name', existing,
                              'audit_batch', batch, 'orphaned_flex_lines', orphaned,
                              'flex_lines_marked_for_removal', marked);
END
$$;
