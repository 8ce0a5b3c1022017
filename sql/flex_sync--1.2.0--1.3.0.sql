-- flex_sync 1.2.0 to 1.3.0: the source-preserving merge (flex_sync_merge, its watermarks,
-- conflicts, audit and log), the idempotent ingest (flex_sync_ingest_register, flex_sync_ingest,
-- its id map, operation record and inbox with leased workers) and their rules from the pure core
-- (flex_sync_private.guard_hold_reason, ingest_order, ingest_retryable), and a cheaper
-- no-change sync (flex_sync_private.pair_unique_indexes, the default rules).
-- Objects are created exactly as a fresh 1.3.0 install creates them.

-- The default rules, cheaper: desired_crew() in SQL (the planner inlines it into the read of a
-- crew call) and authorize() without a sub-select planned again on every call. An overridable
-- rule is replaced only while it is still the released default: a rule its owner replaced is
-- kept as it is.
DO $upgrade$
BEGIN
    IF (SELECT md5(prosrc) FROM pg_catalog.pg_proc WHERE oid = 'flex_sync_private.desired_crew(uuid, text)'::regprocedure) = '7ce9d1a41d983867a7e6b172ded02a27' THEN
        EXECUTE $rule$
CREATE OR REPLACE FUNCTION flex_sync_private.desired_crew(p_job_id uuid, p_department text)
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
$rule$;
    END IF;
    IF (SELECT md5(prosrc) FROM pg_catalog.pg_proc WHERE oid = 'flex_sync_private.authorize()'::regprocedure) = '6009a6d5e06b67d0ee6cad5b40a91d28' THEN
        EXECUTE $rule$
CREATE OR REPLACE FUNCTION flex_sync_private.authorize()
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
$rule$;
    END IF;
END
$upgrade$;

-- The unique-index check the sync makes on every call, in SQL so that it is inlined; the
-- plpgsql function that raises for a deferrable one is built on it.
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

CREATE OR REPLACE FUNCTION flex_sync_private.pair_unique_index()
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

-- The settings in SQL too (inlined into call_context.sql), Vault read by a function of its own
-- only when it is needed. The function returns a set now, so it is made again.
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

DROP FUNCTION flex_sync_private.effective_settings();
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

-- The source-preserving merge: flex_sync_merge() brings the rows of a source relation (a staging
-- table loaded with COPY, a view, a foreign table) into a target table on behalf of one owner.
-- It inserts new keys and updates the rows the owner owns, never changes or deletes a row of
-- another owner (a key clash is a conflict, kept with both versions), moves a (cursor, key)
-- watermark per (target, owner) in the same transaction, and in full mode deletes only the
-- owner's rows the source no longer has, audited first and held by the crew sync's guard.

-- The watermark of each (target, owner): the greatest (cursor, key) merged; key_value holds the
-- key's columns as text, in the order of the merge's key.
CREATE TABLE flex_sync_private.merge_watermarks (
    target       regclass NOT NULL,
    owner        text NOT NULL,
    cursor_value text NOT NULL,
    key_value    jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, owner)
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.merge_watermarks', '');

-- Source rows whose key a row of another owner holds: neither is changed; both are kept here,
-- one row per clash with the versions the last merge that met it saw.
CREATE TABLE flex_merge_conflicts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target       regclass NOT NULL,
    owner        text NOT NULL,
    key          jsonb NOT NULL,
    target_owner text,
    source_row   jsonb NOT NULL,
    target_row   jsonb NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (target, owner, key)
);
SELECT pg_catalog.pg_extension_config_dump('flex_merge_conflicts', '');
SELECT pg_catalog.pg_extension_config_dump('flex_merge_conflicts_id_seq', '');

-- Every row a full merge deleted, copied before it went.
CREATE TABLE flex_merge_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target      regclass NOT NULL,
    owner       text NOT NULL,
    key         jsonb NOT NULL,
    removed_row jsonb NOT NULL,
    removed_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flex_merge_audit', '');
SELECT pg_catalog.pg_extension_config_dump('flex_merge_audit_id_seq', '');

-- One row per merge that wrote (a dry run writes nothing, this row included).
CREATE TABLE flex_merge_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target      regclass NOT NULL,
    owner       text NOT NULL,
    mode        text NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer NOT NULL,
    inserted    integer NOT NULL,
    updated     integer NOT NULL,
    unchanged   integer NOT NULL,
    conflicts   integer NOT NULL,
    deleted     integer NOT NULL,
    held        text
);
SELECT pg_catalog.pg_extension_config_dump('flex_merge_log', '');
SELECT pg_catalog.pg_extension_config_dump('flex_merge_log_id_seq', '');

-- A row of typed literals, e.g. '2025-01-01'::timestamptz, '7'::integer: the values as text,
-- each with its type.
CREATE FUNCTION flex_sync_private.merge_row_literal(p_values text[], p_types text[])
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('%L::%s', v, t), ', ' ORDER BY n) FROM unnest(p_values, p_types) WITH ORDINALITY u(v, t, n);
$$;

-- The columns as a list for a statement, each prefixed by an alias when one is given.
CREATE FUNCTION flex_sync_private.merge_column_list(p_columns text[], p_alias text, p_suffix text DEFAULT '')
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(coalesce(p_alias || '.', '') || quote_ident(c) || p_suffix, ', ' ORDER BY n)
    FROM unnest(p_columns) WITH ORDINALITY u(c, n);
$$;

-- Options: mode ('incremental' | 'full'), cursor_column (incremental: a source column), lookback
-- (incremental, a time cursor: an interval; the merge reads again what changed that long before
-- the watermark, for rows that arrive late), batch_size (incremental, without lookback: at most
-- this many rows, in (cursor, key) order), dry_run, max_delete_fraction (0 to 1, default 0.5),
-- force. Everything is checked before anything is written; the source's values are staged in
-- the target's column types by PostgreSQL's assignment rules, as an INSERT would take them. Runs
-- as its caller (the caller's rights on target and source apply, row level security too); merges
-- of one target take a lock of their own, so they run one after the other.
CREATE FUNCTION flex_sync_merge(target regclass, source regclass, key text[], owner_column text, owner text,
                                options jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- The watermark keeps the cursor as text: written and read back in one date style.
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
    started      timestamptz := clock_timestamp();
    known        constant text[] := ARRAY['mode', 'cursor_column', 'lookback', 'batch_size', 'dry_run', 'max_delete_fraction',
                                          'force'];
    -- The staged rows' table and the cursor's column in it: names no caller's table or column has.
    staged       constant text := '"flex_sync merge staged"';
    cursor_alias constant text := 'flex_sync merge cursor';
    bad_key      text;
    mode         text;
    cursor_col   text;
    lookback     interval;
    batch_size   integer;
    dry_run      boolean;
    force        boolean;
    fraction     double precision;
    col          record;
    cols         text[] := '{}';
    set_cols     text[] := '{}';
    identities   text[] := '{}';
    ignored      text[];
    key_types    text[] := '{}';
    cursor_type  text;
    owner_type   text;
    mark         record;
    staged_where text := 'true';
    join_on      text;
    mine         text;
    theirs       text;
    changed      text;
    key_json     text;
    n_staged     bigint;
    n_new        bigint;
    n_conflicts  bigint;
    n_updated    bigint;
    n_inserted   bigint;
    n_deleted    bigint := 0;
    n_would      bigint := 0;
    n_owner_rows bigint := 0;
    others_before bigint;
    others_after  bigint;
    held         text;
    new_mark     record;
    watermark    jsonb;
    advance      boolean;
    twin         text;
    identity_col text;
BEGIN
    -- The options and the call.
    IF jsonb_typeof(options) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'flex_sync_merge: options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT k INTO bad_key FROM jsonb_object_keys(options) k WHERE NOT k = ANY (known) LIMIT 1;
    IF bad_key IS NOT NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: unknown option "%"', bad_key
            USING ERRCODE = 'invalid_parameter_value', HINT = 'known options: ' || array_to_string(known, ', ');
    END IF;
    mode := coalesce(options ->> 'mode', 'incremental');
    IF mode NOT IN ('incremental', 'full') THEN
        RAISE EXCEPTION 'flex_sync_merge: mode must be incremental or full, not "%"', mode USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cursor_col := options ->> 'cursor_column';
    IF mode = 'incremental' AND cursor_col IS NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: an incremental merge needs the option cursor_column'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'name the source column that grows with every change (e.g. updated_at), or use "mode": "full"';
    END IF;
    BEGIN
        lookback := (options ->> 'lookback')::interval;
        batch_size := (options ->> 'batch_size')::integer;
        dry_run := coalesce((options ->> 'dry_run')::boolean, false);
        force := coalesce((options ->> 'force')::boolean, false);
        fraction := coalesce((options ->> 'max_delete_fraction')::double precision, 0.5);
    EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format OR datetime_field_overflow OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'flex_sync_merge: bad option value: %', SQLERRM
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'lookback is an interval ("1 hour"), batch_size a positive integer, dry_run and force booleans, '
                         'max_delete_fraction a number from 0 to 1';
    END;
    IF fraction < 0 OR fraction > 1 THEN
        RAISE EXCEPTION 'flex_sync_merge: max_delete_fraction must be from 0 to 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (batch_size IS NOT NULL OR lookback IS NOT NULL) AND mode = 'full' THEN
        RAISE EXCEPTION 'flex_sync_merge: batch_size and lookback are for an incremental merge' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size < 1 OR (batch_size IS NOT NULL AND lookback IS NOT NULL) THEN
        RAISE EXCEPTION 'flex_sync_merge: batch_size must be a positive integer, and cannot go with lookback'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a batch read again from the look-back window would never pass it';
    END IF;
    IF owner IS NULL OR owner_column IS NULL OR key IS NULL OR cardinality(key) = 0 OR target IS NULL OR source IS NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: target, source, key, owner_column and owner must be given'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF target = source THEN
        RAISE EXCEPTION 'flex_sync_merge: the source is the target' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A snapshot taken before the lock would read a stale watermark and stale rows.
    IF current_setting('transaction_isolation') IN ('repeatable read', 'serializable') THEN
        RAISE EXCEPTION 'flex_sync_merge cannot run in a % transaction', upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state', HINT = 'call it in READ COMMITTED, or in its own transaction';
    END IF;

    -- The relations and their columns, matched by name.
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = target) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'flex_sync_merge: the target % is not a table', target USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO owner_type FROM pg_attribute a
    WHERE a.attrelid = target AND a.attname = owner_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF owner_type IS NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: the target % has no owner column "%"', target, owner_column
            USING ERRCODE = 'undefined_column';
    END IF;
    FOR col IN
        SELECT t.attname::text AS name, format_type(t.atttypid, t.atttypmod) AS target_type, t.attgenerated, t.attidentity,
               s.attname IS NOT NULL AS in_source
        FROM pg_attribute t
        LEFT JOIN pg_attribute s ON s.attrelid = source AND s.attname = t.attname AND s.attnum > 0 AND NOT s.attisdropped
        WHERE t.attrelid = target AND t.attnum > 0 AND NOT t.attisdropped
        ORDER BY t.attnum
    LOOP
        IF col.name = owner_column OR NOT col.in_source THEN
            IF col.name = ANY (key) THEN
                RAISE EXCEPTION 'flex_sync_merge: the key column "%" is not in the source %', col.name, source
                    USING ERRCODE = 'undefined_column';
            END IF;
            CONTINUE;
        END IF;
        IF col.attgenerated <> '' THEN
            IF col.name = ANY (key) THEN
                RAISE EXCEPTION 'flex_sync_merge: the key column "%" is generated', col.name USING ERRCODE = 'invalid_column_reference';
            END IF;
            CONTINUE;
        END IF;
        cols := cols || col.name;
        IF col.attidentity = 'a' THEN
            identities := identities || col.name;
        END IF;
        -- What an update sets: not the key, nor an identity the target always makes itself.
        IF NOT col.name = ANY (key) AND col.attidentity <> 'a' THEN
            set_cols := set_cols || col.name;
        END IF;
        IF col.name = ANY (key) THEN
            key_types := key_types || col.target_type;
        END IF;
    END LOOP;
    SELECT array_agg(k) INTO bad_key FROM unnest(key) k
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = target AND a.attname = k AND a.attnum > 0 AND NOT a.attisdropped);
    IF bad_key IS NOT NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: the target % has no key column %', target, bad_key USING ERRCODE = 'undefined_column';
    END IF;
    IF NOT EXISTS (
            SELECT 1 FROM pg_index i
            WHERE i.indrelid = target AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
              AND i.indnkeyatts = cardinality(key)
              AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM unnest(i.indkey::int2[]) WITH ORDINALITY u(attnum, n)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum WHERE u.n <= i.indnkeyatts)
                  = (SELECT array_agg(k ORDER BY k) FROM unnest(key) k)) THEN
        RAISE EXCEPTION 'flex_sync_merge: the target % has no unique index on (%)', target, array_to_string(key, ', ')
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'the key names one row: add a unique constraint on those columns';
    END IF;
    SELECT array_agg(s.attname::text ORDER BY s.attnum) INTO ignored FROM pg_attribute s
    WHERE s.attrelid = source AND s.attnum > 0 AND NOT s.attisdropped AND s.attname::text <> owner_column
      AND NOT s.attname::text = ANY (cols) AND s.attname::text IS DISTINCT FROM cursor_col;
    IF mode = 'incremental' THEN
        SELECT format_type(a.atttypid, a.atttypmod) INTO cursor_type FROM pg_attribute a
        WHERE a.attrelid = source AND a.attname = cursor_col AND a.attnum > 0 AND NOT a.attisdropped;
        IF cursor_type IS NULL THEN
            RAISE EXCEPTION 'flex_sync_merge: the source % has no cursor column "%"', source, cursor_col USING ERRCODE = 'undefined_column';
        END IF;
        IF lookback IS NOT NULL AND cursor_type NOT LIKE 'timestamp%' AND cursor_type <> 'date' THEN
            RAISE EXCEPTION 'flex_sync_merge: lookback needs a time cursor, and "%" is %', cursor_col, cursor_type
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    -- One merge of a target at a time.
    PERFORM pg_advisory_xact_lock(x'464C584D'::integer, hashtext(target::oid::text));

    -- The rows to merge, staged once in the target's column types: the whole source in full mode,
    -- in incremental mode those past the watermark, (cursor, key) compared as a row so that
    -- equal cursors never skip a row.
    SELECT w.cursor_value, w.key_value INTO mark FROM flex_sync_private.merge_watermarks w
    WHERE w.target = flex_sync_merge.target AND w.owner = flex_sync_merge.owner;
    IF mode = 'incremental' AND mark.cursor_value IS NOT NULL THEN
        IF lookback IS NOT NULL THEN
            staged_where := format('s.%I >= %L::%s - %L::interval', cursor_col, mark.cursor_value, cursor_type, lookback);
        ELSE
            staged_where := format('(%s) > (%s)', flex_sync_private.merge_column_list(cursor_col || key, 's'),
                flex_sync_private.merge_row_literal(
                    mark.cursor_value || ARRAY(SELECT jsonb_array_elements_text(mark.key_value)), cursor_type || key_types));
        END IF;
    ELSIF mode = 'incremental' THEN
        staged_where := format('s.%I IS NOT NULL', cursor_col);
    END IF;
    IF to_regclass('pg_temp.' || staged) IS NOT NULL THEN
        EXECUTE 'DROP TABLE pg_temp.' || staged;
    END IF;
    EXECUTE format('CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s%s FROM %s t WITH NO DATA',
                   staged, flex_sync_private.merge_column_list(cols, 't'),
                   CASE WHEN mode = 'incremental' THEN format(', NULL::%s AS %I', cursor_type, cursor_alias) ELSE '' END, target);
    BEGIN
        EXECUTE format('INSERT INTO %s SELECT %s%s FROM %s s WHERE %s%s',
                       staged, flex_sync_private.merge_column_list(cols, 's'),
                       CASE WHEN mode = 'incremental' THEN format(', s.%I', cursor_col) ELSE '' END,
                       source, staged_where,
                       CASE WHEN batch_size IS NOT NULL
                            THEN format(' ORDER BY %s LIMIT %s', flex_sync_private.merge_column_list(cursor_col || key, 's'), batch_size)
                            ELSE '' END);
    EXCEPTION WHEN datatype_mismatch OR string_data_right_truncation OR numeric_value_out_of_range
                   OR invalid_text_representation OR not_null_violation OR check_violation THEN
        RAISE EXCEPTION 'flex_sync_merge: the source does not fit the target: %', SQLERRM
            USING ERRCODE = SQLSTATE, HINT = 'convert it in a view over the source, or change one of the columns';
    END;
    GET DIAGNOSTICS n_staged = ROW_COUNT;
    -- Its size and keys known to the planner: the joins below hash it instead of rescanning it.
    EXECUTE 'ANALYZE pg_temp.' || staged;
    join_on := (SELECT string_agg(format('t.%1$I = s.%1$I', k), ' AND ') FROM unnest(key) k);
    key_json := 'jsonb_build_array(' || flex_sync_private.merge_column_list(key, 's', '::text') || ')';
    EXECUTE format('SELECT %s::text FROM %s s WHERE %s LIMIT 1', key_json, staged,
                   (SELECT string_agg(format('s.%I IS NULL', k), ' OR ') FROM unnest(key) k)) INTO twin;
    IF twin IS NOT NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: the source has a row without a key: %', twin USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('SELECT %s::text FROM %s s GROUP BY %s HAVING count(*) > 1 LIMIT 1',
                   key_json, staged, flex_sync_private.merge_column_list(key, 's')) INTO twin;
    IF twin IS NOT NULL THEN
        RAISE EXCEPTION 'flex_sync_merge: the source has more than one row for the key %', twin
            USING ERRCODE = 'cardinality_violation', HINT = 'the key must name one row of the source too';
    END IF;
    -- Owners compared in the owner column's own type.
    mine := format('t.%I = %L::%s', owner_column, owner, owner_type);
    theirs := format('t.%I IS DISTINCT FROM %L::%s', owner_column, owner, owner_type);
    -- Compared as text: every type has one, not every type has an equality operator.
    changed := CASE WHEN cardinality(set_cols) = 0 THEN 'false'
                    ELSE format('ROW(%s)::text IS DISTINCT FROM ROW(%s)::text', flex_sync_private.merge_column_list(set_cols, 't'),
                                flex_sync_private.merge_column_list(set_cols, 's')) END;
    EXECUTE format('SELECT count(*) FROM %s t WHERE %s', target, theirs) INTO others_before;

    -- Counted before anything is written, for a dry run and the guard alike.
    EXECUTE format('SELECT count(*) FROM %s s JOIN %s t ON %s WHERE %s', staged, target, join_on, theirs) INTO n_conflicts;
    EXECUTE format('SELECT count(*) FROM %s s WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE %s)', staged, target, join_on) INTO n_new;
    IF mode = 'full' THEN
        -- An anti-join (NOT EXISTS under an aggregate's FILTER would rescan the source per row).
        EXECUTE format('SELECT count(*) FROM %s t WHERE %s AND NOT EXISTS (SELECT 1 FROM %s s WHERE %s)',
                       target, mine, staged, join_on) INTO n_would;
        EXECUTE format('SELECT count(*) FROM %s t WHERE %s', target, mine) INTO n_owner_rows;
        held := flex_sync_private.guard_hold_reason(n_would, n_owner_rows, n_staged, fraction);
        IF force THEN
            held := NULL;
        END IF;
    END IF;

    IF dry_run THEN
        EXECUTE format('SELECT count(*) FROM %s s JOIN %s t ON %s WHERE %s AND %s', staged, target, join_on, mine, changed)
            INTO n_updated;
        n_inserted := n_new;
        n_deleted := CASE WHEN held IS NULL THEN n_would ELSE 0 END;
    ELSE
        -- Conflicts: neither row changes; both are kept.
        EXECUTE format('INSERT INTO @extschema@.flex_merge_conflicts (target, owner, key, target_owner, source_row, target_row)
                        SELECT %L, %L, %s, t.%I::text, to_jsonb(s) - %L, to_jsonb(t) FROM %s s JOIN %s t ON %s WHERE %s
                        ON CONFLICT (target, owner, key) DO UPDATE
                        SET target_owner = EXCLUDED.target_owner, source_row = EXCLUDED.source_row,
                            target_row = EXCLUDED.target_row, detected_at = now()',
                       target, owner, key_json, owner_column, cursor_alias, staged, target, join_on, theirs);
        n_updated := 0;
        IF cardinality(set_cols) > 0 THEN
            EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM %s s WHERE %s AND %s AND %s',
                           target, flex_sync_private.merge_column_list(set_cols, NULL),
                           flex_sync_private.merge_column_list(set_cols, 's'), staged, join_on, mine, changed);
            GET DIAGNOSTICS n_updated = ROW_COUNT;
        END IF;
        EXECUTE format('INSERT INTO %s (%s, %I) %s SELECT %s, %L FROM %s s
                        WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE %s) ON CONFLICT (%s) DO NOTHING',
                       target, flex_sync_private.merge_column_list(cols, NULL), owner_column,
                       CASE WHEN cardinality(identities) > 0 THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
                       flex_sync_private.merge_column_list(cols, 's'), owner, staged,
                       target, join_on, flex_sync_private.merge_column_list(key, NULL));
        GET DIAGNOSTICS n_inserted = ROW_COUNT;
        -- A new key another writer took meanwhile is a clash too (it is not recorded: that row
        -- was not there when the conflicts were).
        n_conflicts := n_conflicts + (n_new - n_inserted);
        -- Values given for an identity the target makes itself: its sequence moves past them.
        FOREACH identity_col IN ARRAY identities LOOP
            IF n_inserted > 0 THEN
                EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, %L), greatest(max(t.%I), 1)) FROM %s t
                                HAVING max(t.%I) >= (SELECT last_value FROM %s)',
                               target, identity_col, identity_col, target, identity_col,
                               pg_get_serial_sequence(target::text, identity_col));
            END IF;
        END LOOP;
        IF mode = 'full' AND held IS NULL THEN
            EXECUTE format('WITH gone AS (DELETE FROM %s t WHERE %s AND NOT EXISTS (SELECT 1 FROM %s s WHERE %s) RETURNING t.*)
                            INSERT INTO @extschema@.flex_merge_audit (target, owner, key, removed_row)
                            SELECT %L, %L, %s, to_jsonb(gone) FROM gone',
                           target, mine, staged, join_on, target, owner,
                           'jsonb_build_array(' || flex_sync_private.merge_column_list(key, 'gone', '::text') || ')');
            GET DIAGNOSTICS n_deleted = ROW_COUNT;
        END IF;
    END IF;

    -- The watermark moves with the rows, in this transaction, and only forward: with a look-back
    -- the rows read again may all lie behind it.
    IF mode = 'incremental' AND n_staged > 0 THEN
        EXECUTE format('SELECT s.%I::text AS cursor_value, %s AS key_value FROM %s s ORDER BY s.%I DESC, %s LIMIT 1',
                       cursor_alias, key_json, staged, cursor_alias, flex_sync_private.merge_column_list(key, 's', ' DESC'))
            INTO new_mark;
        advance := mark.cursor_value IS NULL;
        IF NOT advance THEN
            EXECUTE format('SELECT (%s) > (%s)',
                flex_sync_private.merge_row_literal(
                    new_mark.cursor_value || ARRAY(SELECT jsonb_array_elements_text(new_mark.key_value)), cursor_type || key_types),
                flex_sync_private.merge_row_literal(
                    mark.cursor_value || ARRAY(SELECT jsonb_array_elements_text(mark.key_value)), cursor_type || key_types))
                INTO advance;
        END IF;
        IF advance THEN
            watermark := jsonb_build_object('cursor', new_mark.cursor_value, 'key', new_mark.key_value);
        END IF;
        IF NOT dry_run AND advance THEN
            INSERT INTO flex_sync_private.merge_watermarks AS w (target, owner, cursor_value, key_value)
            VALUES (flex_sync_merge.target, flex_sync_merge.owner, new_mark.cursor_value, new_mark.key_value)
            ON CONFLICT ON CONSTRAINT merge_watermarks_pkey DO UPDATE
            SET cursor_value = EXCLUDED.cursor_value, key_value = EXCLUDED.key_value, updated_at = now();
        END IF;
    END IF;
    IF watermark IS NULL AND mark.cursor_value IS NOT NULL THEN
        watermark := jsonb_build_object('cursor', mark.cursor_value, 'key', mark.key_value);
    END IF;
    EXECUTE format('SELECT count(*) FROM %s t WHERE %s', target, theirs) INTO others_after;
    IF NOT dry_run THEN
        INSERT INTO @extschema@.flex_merge_log (target, owner, mode, started_at, duration_ms, inserted, updated, unchanged, conflicts, deleted, held)
        VALUES (flex_sync_merge.target, flex_sync_merge.owner, mode, started,
                round(extract(epoch FROM clock_timestamp() - started) * 1000),
                n_inserted, n_updated, n_staged - n_inserted - n_updated - n_conflicts, n_conflicts, n_deleted, held);
    END IF;
    RETURN jsonb_build_object(
        'inserted', n_inserted, 'updated', n_updated, 'unchanged', n_staged - n_inserted - n_updated - n_conflicts,
        'conflicts', n_conflicts, 'deleted', n_deleted,
        'other_owner_rows_before', others_before, 'other_owner_rows_after', others_after,
        'watermark', watermark, 'dry_run', dry_run, 'mode', mode, 'ignored_columns', coalesce(to_jsonb(ignored), '[]'),
        'held', CASE WHEN held IS NULL THEN NULL ELSE jsonb_build_object(
            'reason', held, 'deletes', n_would, 'rows', n_owner_rows, 'note',
            format('would delete %s of the %s rows of owner %s (the source has %s); pass "force": true to apply',
                   n_would, n_owner_rows, owner, n_staged)) END,
        'duration_ms', round(extract(epoch FROM clock_timestamp() - started) * 1000));
END
$$;

-- The idempotent ingest: the server half of a device sync queue. A device posts a batch of
-- operations naming its own local ids; flex_sync_ingest() applies each operation once (its
-- (device_id, op_id) is recorded with its result in the same transaction as the change), parents
-- before children, each in a savepoint, and rewrites foreign keys through a persistent id map
-- (device_id, table, local_id) -> server id. A replayed batch is answered from the record. The
-- inbox stores batches for devices that cannot wait; workers lease them (SKIP LOCKED, a lease
-- expiry and a fencing counter) and apply them with the same function.
--
-- Rights: flex_sync_ingest() runs as its caller, so the caller's privileges and row level
-- security decide what a device may change; the records it keeps are written only through the
-- SECURITY DEFINER helpers below, which change nothing but those records.

-- The tables devices may write, by the name devices use for them (the table's own name, which is
-- unique among them), with the natural key that makes one server row of what two devices create.
CREATE TABLE flex_sync_private.ingest_tables (
    name          text PRIMARY KEY,
    target        regclass NOT NULL UNIQUE,
    natural_key   text[],
    registered_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.ingest_tables', '');

-- The id map: which server row a device's local id is. A mapping never changes once made.
CREATE TABLE flex_sync_private.ingest_id_map (
    device_id  text NOT NULL,
    table_name text NOT NULL,
    local_id   text NOT NULL,
    server_id  uuid NOT NULL,
    mapped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, table_name, local_id)
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.ingest_id_map', '');

-- Which caller each device id belongs to: the first that used it (its JWT subject through
-- Supabase, its role otherwise). Another caller is refused the device; the extension's owner
-- and its members (the DBA, the inbox's worker) may act for any device.
CREATE TABLE flex_sync_private.ingest_devices (
    device_id  text PRIMARY KEY,
    caller     text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.ingest_devices', '');

-- Every operation taken, with the result its device was given. `result` is NULL inside the
-- transaction that is applying it (and where a direct call of ingest_claim committed without
-- applying: the next claim applies it); an operation that failed in a way a retry can help is
-- not kept, so the retry applies it.
CREATE TABLE flex_sync_private.ingest_operations (
    device_id  text NOT NULL,
    op_id      text NOT NULL,
    result     jsonb,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, op_id)
);
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.ingest_operations', '');

-- Batches waiting for a worker. `due_at`: when a queued batch may be taken, or when a leased
-- one's lease runs out. `fence` grows with every lease: a worker settles a batch only while the
-- fence is the one it leased, so a worker whose lease was taken over cannot finish.
-- `submitted_by` and `submitted_claims`: the role and JWT claims of the submitter, which the
-- worker takes on to apply the batch with the submitter's rights.
CREATE TABLE flex_sync_private.ingest_inbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id        text NOT NULL,
    batch            jsonb NOT NULL,
    submitted_by     name NOT NULL,
    submitted_claims text,
    state        text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'leased', 'done', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    fence        bigint NOT NULL DEFAULT 0,
    leased_by    integer,
    due_at       timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    result       jsonb,
    last_error   text
);
CREATE INDEX ingest_inbox_due ON flex_sync_private.ingest_inbox (due_at, id) WHERE state IN ('queued', 'leased');
CREATE INDEX ingest_inbox_device ON flex_sync_private.ingest_inbox (device_id, id) WHERE state IN ('queued', 'leased');
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.ingest_inbox', '');
SELECT pg_catalog.pg_extension_config_dump('flex_sync_private.ingest_inbox_id_seq', '');

CREATE VIEW flex_sync_ingest_inbox AS
    SELECT id, device_id, submitted_by, state, attempts, fence, leased_by, due_at, submitted_at, finished_at,
           jsonb_array_length(batch) AS operations, last_error, result
    FROM flex_sync_private.ingest_inbox;

-- Batches that will not be tried again until flex_sync_ingest_requeue().
CREATE VIEW flex_sync_ingest_dead AS
    SELECT id, device_id, attempts, submitted_at, finished_at, operations, last_error, result
    FROM flex_sync_ingest_inbox
    WHERE state = 'dead';

CREATE FUNCTION flex_sync_ingest_register(target regclass, natural_key text[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_kind "char";
    v_partition boolean;
    v_name name;
    v_id_column name;
    v_missing text;
    v_usable_index boolean;
    v_deferrable_index boolean;
    v_other regclass;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'flex_sync: target must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Tables dropped since they were registered leave their names free, and their mappings go:
    -- they name rows that are gone.
    WITH dropped AS (
        DELETE FROM flex_sync_private.ingest_tables t WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.target)
        RETURNING t.name
    )
    DELETE FROM flex_sync_private.ingest_id_map m WHERE m.table_name IN (SELECT d.name FROM dropped d);
    SELECT c.relkind, c.relispartition, c.relname INTO v_kind, v_partition, v_name FROM pg_class c WHERE c.oid = target;
    IF v_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'flex_sync: % is not a table', target
            USING ERRCODE = 'wrong_object_type', HINT = 'devices write tables: register the table a view or foreign table reads';
    END IF;
    IF v_partition THEN
        RAISE EXCEPTION 'flex_sync: % is a partition', target
            USING ERRCODE = 'wrong_object_type', HINT = 'register the partitioned table: its rows are reachable under one name';
    END IF;
    SELECT a.attname INTO v_id_column
    FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = target AND i.indisprimary AND i.indnatts = 1 AND a.atttypid = 'uuid'::regtype;
    IF v_id_column IS NULL THEN
        RAISE EXCEPTION 'flex_sync: % has no primary key of one uuid column', target
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'the server id of a device''s row is a uuid: give the table a primary key such as id uuid PRIMARY KEY DEFAULT gen_random_uuid()';
    END IF;
    IF natural_key IS NOT NULL THEN
        IF cardinality(natural_key) = 0 OR array_position(natural_key, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'flex_sync: natural_key must name at least one column, or be NULL'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT string_agg(quote_ident(k), ', ') INTO v_missing
        FROM unnest(natural_key) k
        WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                          WHERE a.attrelid = target AND a.attname = k AND a.attnum > 0 AND NOT a.attisdropped);
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'flex_sync: % has no column %', target, v_missing USING ERRCODE = 'undefined_column';
        END IF;
        IF v_id_column = ANY (natural_key) THEN
            RAISE EXCEPTION 'flex_sync: the natural key of % cannot contain its server id %', target, quote_ident(v_id_column)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The unique indexes whose key is exactly these columns. ON CONFLICT needs a valid, plain,
        -- immediate one to find the one row (with NULLS NOT DISTINCT a key with a NULL would be a
        -- unique violation instead of a row to meet), and takes every one as its arbiter, so a
        -- deferrable one beside it is refused.
        SELECT bool_or(i.indisvalid AND i.indimmediate AND NOT i.indnullsnotdistinct), bool_or(NOT i.indimmediate)
        INTO v_usable_index, v_deferrable_index
        FROM pg_index i
        WHERE i.indrelid = target AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
          AND i.indnkeyatts = cardinality(natural_key)
          AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = target AND a.attnum = k.attnum
               WHERE k.n <= i.indnkeyatts)
              = (SELECT array_agg(DISTINCT k ORDER BY k) FROM unnest(natural_key) k);
        IF NOT coalesce(v_usable_index, false) THEN
            RAISE EXCEPTION 'flex_sync: % has no unique index on exactly (%)', target, array_to_string(natural_key, ', ')
                USING ERRCODE = 'invalid_column_reference',
                      HINT = 'two devices creating one natural key must meet one row: create a unique constraint on these columns (valid, not partial, not deferrable, not NULLS NOT DISTINCT)';
        END IF;
        IF v_deferrable_index THEN
            RAISE EXCEPTION 'flex_sync: % has a deferrable unique constraint on its natural key (%)', target, array_to_string(natural_key, ', ')
                USING ERRCODE = 'invalid_column_reference',
                      HINT = 'INSERT ... ON CONFLICT cannot use a deferrable constraint: drop it, the immediate one is enough';
        END IF;
    END IF;
    SELECT t.target INTO v_other FROM flex_sync_private.ingest_tables t
    WHERE t.name = v_name AND t.target <> flex_sync_ingest_register.target;
    IF v_other IS NOT NULL THEN
        RAISE EXCEPTION 'flex_sync: a table named % is registered already (%)', quote_ident(v_name), v_other
            USING ERRCODE = 'duplicate_object', HINT = 'devices name tables without their schema, so registered tables need distinct names';
    END IF;
    INSERT INTO flex_sync_private.ingest_tables AS t (name, target, natural_key)
    VALUES (v_name, target, natural_key)
    ON CONFLICT ON CONSTRAINT ingest_tables_target_key DO UPDATE SET natural_key = excluded.natural_key, name = excluded.name;
END
$$;

-- Devices may no longer write the table; its mappings stay (registering it again uses them).
-- Returns whether it was registered.
CREATE FUNCTION flex_sync_ingest_unregister(target regclass)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM flex_sync_private.ingest_tables t WHERE t.target = flex_sync_ingest_unregister.target RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone);
$$;

-- Lets the caller act for the device: true when the device is the caller's, binding it to the
-- caller on first use if `p_bind` (false, without binding it, when it belongs to no one yet);
-- 42501 when it belongs to another caller. The caller is the role it acts as (PostgREST's SET
-- LOCAL ROLE; SECURITY DEFINER does not change the setting) with the JWT subject, if any: a
-- subject is trusted for the role it came with, as PostgREST sets both. Every helper that reads
-- or writes a device's records calls it first; the extension's owner and its members may act for
-- any device.
CREATE FUNCTION flex_sync_private.ingest_admit(p_device_id text, p_bind boolean DEFAULT true)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role name := coalesce(nullif(current_setting('role'), 'none'), session_user);
    v_subject text := nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub';
    v_caller text := 'role:' || v_role || coalesce(' sub:' || v_subject, '');
    v_owner text;
BEGIN
    IF pg_has_role(v_role, (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'flex_sync'), 'MEMBER') THEN
        RETURN true;
    END IF;
    SELECT d.caller INTO v_owner FROM flex_sync_private.ingest_devices d WHERE d.device_id = p_device_id;
    IF v_owner IS NULL AND NOT p_bind THEN
        RETURN false;
    END IF;
    IF v_owner IS NULL THEN
        INSERT INTO flex_sync_private.ingest_devices (device_id, caller) VALUES (p_device_id, v_caller)
        ON CONFLICT DO NOTHING;
        SELECT d.caller INTO v_owner FROM flex_sync_private.ingest_devices d WHERE d.device_id = p_device_id;
    END IF;
    IF v_owner <> v_caller THEN
        RAISE EXCEPTION 'flex_sync: device % belongs to another caller', p_device_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a device id is bound to the user that first sent it; the owner can move it by deleting its row in flex_sync_private.ingest_devices';
    END IF;
    RETURN true;
END
$$;

-- What the ingest needs of each registered table, by the name devices use: the table, its server
-- id column, its natural key, the columns a device may send, and its foreign keys to other
-- registered tables' server ids (column -> that table's name), read from the catalog now.
CREATE FUNCTION flex_sync_private.ingest_catalog()
RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH registered AS (
        SELECT t.name, t.target, t.natural_key, a.attname AS id_column
        FROM flex_sync_private.ingest_tables t
        JOIN pg_index i ON i.indrelid = t.target AND i.indisprimary AND i.indnatts = 1
        JOIN pg_attribute a ON a.attrelid = t.target AND a.attnum = i.indkey[0]
    )
    SELECT coalesce(jsonb_object_agg(r.name, jsonb_build_object(
        'target', r.target::text,
        'id_column', r.id_column,
        'natural_key', to_jsonb(r.natural_key),
        'columns', (SELECT coalesce(jsonb_agg(a.attname), '[]') FROM pg_attribute a
                    WHERE a.attrelid = r.target AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> r.id_column),
        'parents', (SELECT coalesce(jsonb_object_agg(fa.attname, p.name), '{}')
                    FROM pg_constraint c
                    JOIN registered p ON p.target = c.confrelid
                    JOIN pg_attribute pa ON pa.attrelid = p.target AND pa.attnum = c.confkey[1] AND pa.attname = p.id_column
                    JOIN pg_attribute fa ON fa.attrelid = c.conrelid AND fa.attnum = c.conkey[1]
                    WHERE c.conrelid = r.target AND c.contype = 'f' AND cardinality(c.conkey) = 1))), '{}')
    FROM registered r;
$$;

-- The catalog's foreign keys alone, as the order of a batch needs them.
CREATE FUNCTION flex_sync_private.ingest_links(p_catalog jsonb)
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(key, value -> 'parents'), '{}') FROM jsonb_each(p_catalog);
$$;

-- Takes the operation for this call. Taken before: {"stored": the result its device was given
-- then}. Not: {"stored": null, "server_id": the row its local id maps to, "parents": {column:
-- the server id of the parent named, or null}} for `p_parents` {column: [table, local id]}. An
-- operation another transaction is applying is waited for.
CREATE FUNCTION flex_sync_private.ingest_claim(p_device_id text, p_op_id text, p_table text, p_local_id text,
                                               p_parents jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stored jsonb;
BEGIN
    PERFORM flex_sync_private.ingest_admit(p_device_id);
    INSERT INTO flex_sync_private.ingest_operations (device_id, op_id) VALUES (p_device_id, p_op_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT o.result INTO v_stored FROM flex_sync_private.ingest_operations o
        WHERE o.device_id = p_device_id AND o.op_id = p_op_id;
        IF v_stored IS NULL THEN
            -- Taken by a claim that committed without applying (a direct call of this helper):
            -- the operation was never applied. Locked, so that two calls do not both apply it;
            -- the second reads the first's result once it commits.
            SELECT o.result INTO v_stored FROM flex_sync_private.ingest_operations o
            WHERE o.device_id = p_device_id AND o.op_id = p_op_id
            FOR UPDATE;
        END IF;
        IF v_stored IS NOT NULL THEN
            RETURN jsonb_build_object('stored', v_stored);
        END IF;
    END IF;
    RETURN jsonb_build_object(
        'stored', NULL,
        'server_id', (SELECT m.server_id FROM flex_sync_private.ingest_id_map m
                      WHERE m.device_id = p_device_id AND m.table_name = p_table AND m.local_id = p_local_id),
        -- One probe of the map's key per parent: a join would let the planner scan the whole map.
        'parents', (SELECT coalesce(jsonb_object_agg(p.key, (SELECT m.server_id FROM flex_sync_private.ingest_id_map m
                                                              WHERE m.device_id = p_device_id AND m.table_name = p.value ->> 0
                                                                AND m.local_id = p.value ->> 1)), '{}')
                    FROM jsonb_each(p_parents) p));
END
$$;

-- Keeps what an applied operation did: its mapping (made once; a local id another operation of
-- the device mapped to another row meanwhile is a serialization failure, so the retry updates
-- the mapped row instead) and its result.
CREATE FUNCTION flex_sync_private.ingest_record(p_device_id text, p_op_id text, p_table text, p_local_id text,
                                                p_server_id uuid, p_result jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mapped uuid;
BEGIN
    PERFORM flex_sync_private.ingest_admit(p_device_id);
    IF p_server_id IS NOT NULL THEN
        INSERT INTO flex_sync_private.ingest_id_map (device_id, table_name, local_id, server_id)
        VALUES (p_device_id, p_table, p_local_id, p_server_id)
        ON CONFLICT DO NOTHING;
        SELECT m.server_id INTO v_mapped FROM flex_sync_private.ingest_id_map m
        WHERE m.device_id = p_device_id AND m.table_name = p_table AND m.local_id = p_local_id;
        IF v_mapped <> p_server_id THEN
            RAISE EXCEPTION 'flex_sync: %:% of device % was mapped to % by another operation meanwhile',
                            p_table, p_local_id, p_device_id, v_mapped
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    UPDATE flex_sync_private.ingest_operations o SET result = p_result
    WHERE o.device_id = p_device_id AND o.op_id = p_op_id;
END
$$;

-- The result of an operation that failed. One a retry cannot help is kept, so that a replay is
-- answered the same way; one it can help is not, so that the retry applies it.
CREATE FUNCTION flex_sync_private.ingest_failure(p_device_id text, p_op jsonb, p_sqlstate text, p_message text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_retryable boolean := flex_sync_private.ingest_retryable(p_sqlstate);
    v_result jsonb := jsonb_build_object('op_id', p_op ->> 'op_id', 'status', 'failed', 'server_id', NULL,
                                         'error', p_sqlstate || ': ' || p_message, 'retryable', v_retryable);
BEGIN
    PERFORM flex_sync_private.ingest_admit(p_device_id);
    IF NOT v_retryable THEN
        -- Another transaction that took the operation after this one let it go keeps its result;
        -- a claim left without one (a direct call of ingest_claim) gets this one.
        INSERT INTO flex_sync_private.ingest_operations AS o (device_id, op_id, result)
        VALUES (p_device_id, p_op ->> 'op_id', v_result)
        ON CONFLICT (device_id, op_id) DO UPDATE SET result = excluded.result WHERE o.result IS NULL;
    END IF;
    RETURN v_result;
END
$$;

-- Applies one operation in a savepoint and returns its result: the stored one for an operation
-- taken before (status "replayed" if it was applied), else "applied" or "failed". `p_problem`:
-- why the batch's order found it cannot be applied. Runs as the caller: the change is the
-- caller's, under its privileges and row level security. An upsert of a mapped local id is an
-- UPDATE of the columns sent (P0002 when the row is gone or the caller may not change it); of a
-- new one an INSERT that meets the row of its natural key, if the table has one.
CREATE FUNCTION flex_sync_private.ingest_apply(p_device_id text, p_op jsonb, p_table jsonb, p_problem text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_op_id text := p_op ->> 'op_id';
    v_name text := p_op ->> 'table';
    v_local_id text := p_op ->> 'local_id';
    v_data jsonb := p_op -> 'data';
    v_target regclass;
    v_id_column text := p_table ->> 'id_column';
    v_claim jsonb;
    v_server_id uuid;
    v_new_id uuid := gen_random_uuid();
    v_found uuid;
    v_parents jsonb;
    v_self_columns text[] := '{}';
    v_bad_local_id boolean;
    v_column text;
    v_unknown text;
    v_columns text[];
    v_conflict text;
    v_result jsonb;
    v_sqlstate text;
    v_message text;
BEGIN
    -- The parents its data names by local id: {column: [table, local id]}.
    SELECT coalesce(jsonb_object_agg(l.key, jsonb_build_array(l.value, v_data ->> l.key)), '{}') INTO v_parents
    FROM jsonb_each_text(p_table -> 'parents') l
    WHERE p_problem IS NULL AND p_op ->> 'action' = 'upsert' AND jsonb_typeof(v_data -> l.key) IN ('string', 'number');
    v_claim := flex_sync_private.ingest_claim(p_device_id, v_op_id, v_name, v_local_id, v_parents);
    IF v_claim ->> 'stored' IS NOT NULL THEN
        RETURN CASE WHEN v_claim -> 'stored' ->> 'status' = 'applied' THEN v_claim -> 'stored' || '{"status": "replayed"}'
                    ELSE v_claim -> 'stored' END;
    END IF;
    IF p_problem IS NOT NULL THEN
        RAISE EXCEPTION '%', p_problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_target := (p_table ->> 'target')::regclass;
    v_server_id := v_claim ->> 'server_id';
    IF p_op ->> 'action' = 'delete' THEN
        IF v_server_id IS NOT NULL THEN
            EXECUTE format('DELETE FROM %s WHERE %I = $1', v_target, v_id_column) USING v_server_id;
        END IF;
    ELSE
        SELECT string_agg(quote_ident(k), ', ') INTO v_unknown
        FROM jsonb_object_keys(v_data) k WHERE NOT (p_table -> 'columns') ? k;
        IF v_unknown IS NOT NULL THEN
            RAISE EXCEPTION 'table % has no column % a device may write', v_name, v_unknown
                USING ERRCODE = 'undefined_column',
                      HINT = format('a device sends columns of the table by name, all but the server id %I, which the server assigns',
                                    v_id_column);
        END IF;
        FOR v_column IN SELECT jsonb_object_keys(v_parents) LOOP
            -- A local id is a non-empty string or an integer (of 64 bits), as the batch's order
            -- reads it: anything else could never be mapped.
            IF jsonb_typeof(v_data -> v_column) = 'string' THEN
                v_bad_local_id := v_data ->> v_column = '';
            ELSE
                v_bad_local_id := (v_data -> v_column)::text !~ '^-?[0-9]+$'
                    OR (v_data -> v_column)::text::numeric NOT BETWEEN -9223372036854775808 AND 18446744073709551615;
            END IF;
            IF v_bad_local_id THEN
                RAISE EXCEPTION 'the local id in % must be a non-empty string or an integer, not %', v_column, v_data -> v_column
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF jsonb_typeof(v_claim -> 'parents' -> v_column) = 'string' THEN
                v_data := jsonb_set(v_data, ARRAY[v_column], v_claim -> 'parents' -> v_column);
            ELSIF v_server_id IS NULL AND v_parents -> v_column = jsonb_build_array(v_name, v_local_id) THEN
                -- A new row that names itself is its own parent: the id it is about to get, or the
                -- id of the row its natural key meets.
                v_self_columns := v_self_columns || v_column;
                v_data := jsonb_set(v_data, ARRAY[v_column], to_jsonb(v_new_id));
            ELSE
                RAISE EXCEPTION '%:% (its %) has not been synced by device % yet',
                                v_parents -> v_column ->> 0, v_parents -> v_column ->> 1, v_column, p_device_id
                    USING ERRCODE = 'FS001';
            END IF;
        END LOOP;
        v_columns := ARRAY(SELECT jsonb_object_keys(v_data));
        IF v_server_id IS NOT NULL AND cardinality(v_columns) > 0 THEN
            EXECUTE format('UPDATE %1$s AS t SET (%2$s) = (SELECT %3$s FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $2) r)
                            WHERE t.%4$I = $1 RETURNING t.%4$I',
                           v_target, (SELECT string_agg(quote_ident(c), ', ') FROM unnest(v_columns) c),
                           (SELECT string_agg('r.' || quote_ident(c), ', ') FROM unnest(v_columns) c), v_id_column)
                USING v_server_id, v_data
                INTO v_found;
        ELSIF v_server_id IS NOT NULL THEN
            EXECUTE format('SELECT t.%2$I FROM %1$s AS t WHERE t.%2$I = $1', v_target, v_id_column)
                USING v_server_id
                INTO v_found;
        END IF;
        IF v_server_id IS NOT NULL AND v_found IS NULL THEN
            RAISE EXCEPTION '%:% (server id %) was deleted, or this caller may not change it', v_name, v_local_id, v_server_id
                USING ERRCODE = 'no_data_found',
                      HINT = 'a row deleted on the server is not made again from part of its columns: the device gives a new row a new local id';
        END IF;
        IF v_server_id IS NULL THEN
            -- A natural key all sent (not null) meets the row that has it.
            IF jsonb_typeof(p_table -> 'natural_key') = 'array' AND NOT EXISTS (
                   SELECT 1 FROM jsonb_array_elements_text(p_table -> 'natural_key') k
                   WHERE coalesce(jsonb_typeof(v_data -> k), 'null') = 'null') THEN
                v_conflict := format(' ON CONFLICT (%s) DO UPDATE SET %s',
                    (SELECT string_agg(quote_ident(k), ', ') FROM jsonb_array_elements_text(p_table -> 'natural_key') k),
                    format('(%s) = ROW(%s)', (SELECT string_agg(quote_ident(c), ', ') FROM unnest(v_columns) c),
                           (SELECT string_agg(CASE WHEN c = ANY (v_self_columns) THEN 't.' || quote_ident(v_id_column)
                                                   ELSE 'excluded.' || quote_ident(c) END, ', ')
                            FROM unnest(v_columns) c)));
            END IF;
            EXECUTE format('INSERT INTO %1$s AS t (%2$I%3$s) SELECT $1%4$s FROM pg_catalog.jsonb_populate_record(NULL::%1$s, $2) r%5$s RETURNING t.%2$I',
                           v_target, v_id_column,
                           (SELECT string_agg(', ' || quote_ident(c), '') FROM unnest(v_columns) c),
                           (SELECT string_agg(', r.' || quote_ident(c), '') FROM unnest(v_columns) c),
                           coalesce(v_conflict, ''))
                USING v_new_id, v_data
                INTO v_server_id;
        END IF;
    END IF;
    v_result := jsonb_build_object('op_id', v_op_id, 'status', 'applied', 'server_id', v_server_id, 'error', NULL, 'retryable', false);
    PERFORM flex_sync_private.ingest_record(p_device_id, v_op_id, v_name, v_local_id, v_server_id, v_result);
    RETURN v_result;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
    RETURN flex_sync_private.ingest_failure(p_device_id, p_op, v_sqlstate, v_message);
END
$$;

-- The arguments of a call for a device: 22004 for a NULL, 22023 for an empty device id.
CREATE FUNCTION flex_sync_private.ingest_check_arguments(p_device_id text, p_batch jsonb)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_device_id IS NULL OR p_batch IS NULL THEN
        RAISE EXCEPTION 'flex_sync: device_id and batch must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(p_device_id) = '' THEN
        RAISE EXCEPTION 'flex_sync: device_id must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION flex_sync_ingest(device_id text, batch jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_catalog jsonb;
    v_positions integer[];
    v_problems text[];
    v_results jsonb[];
    v_op jsonb;
    v_result jsonb;
    v_id_map jsonb := '{}';
BEGIN
    PERFORM flex_sync_private.ingest_check_arguments(device_id, batch);
    PERFORM flex_sync_private.ingest_admit(device_id);
    -- A deferred check would run at commit, after every operation's savepoint, and fail the whole
    -- batch: each is checked where its operation stands (the caller's pending ones too, now).
    SET CONSTRAINTS ALL IMMEDIATE;
    v_catalog := flex_sync_private.ingest_catalog();
    SELECT coalesce(array_agg(o.position ORDER BY o.step), '{}'), coalesce(array_agg(o.problem ORDER BY o.step), '{}')
    INTO v_positions, v_problems
    FROM flex_sync_private.ingest_order(batch, flex_sync_private.ingest_links(v_catalog)) WITH ORDINALITY o(position, problem, step);
    v_results := array_fill(NULL::jsonb, ARRAY[cardinality(v_positions)]);
    FOR i IN 1 .. cardinality(v_positions) LOOP
        v_op := batch -> v_positions[i];
        v_result := flex_sync_private.ingest_apply(device_id, v_op, v_catalog -> (v_op ->> 'table'), v_problems[i]);
        v_results[v_positions[i] + 1] := v_result;
        IF v_result ->> 'server_id' IS NOT NULL THEN
            v_id_map := v_id_map || jsonb_build_object((v_op ->> 'table') || ':' || (v_op ->> 'local_id'), v_result -> 'server_id');
        END IF;
    END LOOP;
    RETURN jsonb_build_object('results', to_jsonb(v_results), 'id_map', v_id_map);
END
$$;

-- The pause before a batch is tried again after `attempts` tries: exponential (5 s, 10 s, 20 s,
-- ... capped at an hour), each between half and all of it at random so that devices that failed
-- together do not come back together.
CREATE FUNCTION flex_sync_private.retry_delay(p_attempts integer)
RETURNS interval
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT make_interval(secs => least(3600, 5 * 2 ^ greatest(p_attempts - 1, 0)) * (0.5 + random() / 2));
$$;

CREATE FUNCTION flex_sync_ingest_submit(device_id text, batch jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    PERFORM flex_sync_private.ingest_check_arguments(device_id, batch);
    PERFORM flex_sync_private.ingest_admit(device_id);
    -- A batch that could never be applied is refused now, not left for a worker to find dead.
    PERFORM count(*) FROM flex_sync_private.ingest_order(batch, flex_sync_private.ingest_links(flex_sync_private.ingest_catalog()));
    INSERT INTO flex_sync_private.ingest_inbox (device_id, batch, submitted_by, submitted_claims)
    VALUES (device_id, batch, coalesce(nullif(current_setting('role'), 'none'), session_user),
            nullif(current_setting('request.jwt.claims', true), ''))
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Where a submitted batch stands, for the device that submitted it: its state and, once applied,
-- the result flex_sync_ingest() gave.
CREATE FUNCTION flex_sync_ingest_result(device_id text, inbox_id bigint)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM flex_sync_private.ingest_check_arguments(device_id, '[]');
    -- Reading binds nothing: a device no one sent for has no batches to show.
    IF NOT flex_sync_private.ingest_admit(device_id, false) THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT jsonb_build_object('state', i.state, 'attempts', i.attempts, 'result', i.result, 'error', i.last_error)
            FROM flex_sync_private.ingest_inbox i
            WHERE i.id = inbox_id AND i.device_id = flex_sync_ingest_result.device_id);
END
$$;

-- Leases the batch due first for p_lease_seconds: a queued one, or one whose worker's lease ran
-- out (its worker died or is too slow), which then counts as a failed attempt. Only a device's
-- oldest queued batch is taken, and none while another of its batches is leased (a lease that
-- ran out is taken over first), so a device's batches apply one at a time in the order they were
-- submitted (a requeued batch goes before the queued ones). A batch that lost p_max_attempts
-- leases is dead instead.
CREATE FUNCTION flex_sync_private.ingest_lease(p_lease_seconds integer, p_max_attempts integer)
RETURNS TABLE (id bigint, fence bigint, device_id text, batch jsonb, submitted_by name, submitted_claims text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Workers lease one at a time (until the lease commits), each statement after this on a
    -- snapshot that sees every lease made before: two batches of a device are never leased at
    -- once. 'FLXI': the ingest's own class of advisory locks.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'flex_sync: the inbox''s worker runs in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'each lease must see the leases committed before it: reset default_transaction_isolation for the worker''s role';
    END IF;
    PERFORM pg_advisory_xact_lock(x'464C5849'::integer, 0);
    UPDATE flex_sync_private.ingest_inbox i
    SET state = 'dead', leased_by = NULL, finished_at = clock_timestamp(),
        last_error = format('the lease ran out %s times (its worker died or took longer than the lease)', i.attempts)
    WHERE i.id IN (SELECT c.id FROM flex_sync_private.ingest_inbox c
                   WHERE c.state = 'leased' AND c.due_at <= clock_timestamp() AND c.attempts >= p_max_attempts
                   FOR UPDATE SKIP LOCKED);
    RETURN QUERY
    UPDATE flex_sync_private.ingest_inbox i
    SET state = 'leased', fence = i.fence + 1, attempts = i.attempts + 1, leased_by = pg_backend_pid(),
        due_at = clock_timestamp() + make_interval(secs => p_lease_seconds)
    WHERE i.id = (SELECT c.id FROM flex_sync_private.ingest_inbox c
                  WHERE c.state IN ('queued', 'leased') AND c.due_at <= clock_timestamp()
                    -- A lease that ran out is the device's batch in hand: taken over first.
                    AND (c.state = 'queued' OR c.attempts < p_max_attempts)
                    AND (c.state = 'leased'
                         OR NOT EXISTS (SELECT 1 FROM flex_sync_private.ingest_inbox e
                                        WHERE e.device_id = c.device_id AND e.id <> c.id
                                          AND (e.state = 'leased' OR (e.state = 'queued' AND e.id < c.id))))
                  ORDER BY c.due_at, c.id
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED)
    RETURNING i.id, i.fence, i.device_id, i.batch, i.submitted_by, i.submitted_claims;
END
$$;

-- Settles a leased batch in the transaction that applied it, and returns its new state: done, or
-- queued again after a pause when an operation failed in a way a retry can help (dead after
-- p_max_attempts), or dead when the whole batch failed for good. A worker whose fence is no
-- longer the batch's lost its lease: FS002, and the apply rolls back with it.
CREATE FUNCTION flex_sync_private.ingest_settle(p_id bigint, p_fence bigint, p_result jsonb, p_sqlstate text,
                                                p_message text, p_max_attempts integer)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row flex_sync_private.ingest_inbox;
    v_error text := p_sqlstate || ': ' || p_message;
    v_retry boolean;
    v_state text;
BEGIN
    SELECT * INTO v_row FROM flex_sync_private.ingest_inbox i WHERE i.id = p_id FOR UPDATE;
    IF v_row.state IS DISTINCT FROM 'leased' OR v_row.fence <> p_fence THEN
        RAISE EXCEPTION 'flex_sync: inbox batch % was taken over by another worker (fence %, not %)', p_id, v_row.fence, p_fence
            USING ERRCODE = 'FS002';
    END IF;
    IF p_sqlstate IS NOT NULL THEN
        v_retry := flex_sync_private.ingest_retryable(p_sqlstate);
    ELSE
        SELECT r ->> 'error' INTO v_error
        FROM jsonb_array_elements(p_result -> 'results') r WHERE (r ->> 'retryable')::boolean LIMIT 1;
        v_retry := v_error IS NOT NULL;
    END IF;
    v_state := CASE WHEN v_retry AND v_row.attempts < p_max_attempts THEN 'queued'
                    WHEN v_retry OR p_sqlstate IS NOT NULL THEN 'dead'
                    ELSE 'done' END;
    UPDATE flex_sync_private.ingest_inbox i
    SET state = v_state, leased_by = NULL, result = p_result, last_error = v_error,
        -- The claims are needed while the batch may run again (queued, or dead and requeued).
        submitted_claims = CASE WHEN v_state <> 'done' THEN i.submitted_claims END,
        due_at = CASE WHEN v_state = 'queued' THEN clock_timestamp() + flex_sync_private.retry_delay(v_row.attempts) ELSE i.due_at END,
        finished_at = CASE WHEN v_state = 'queued' THEN NULL ELSE clock_timestamp() END
    WHERE i.id = p_id;
    RETURN v_state;
END
$$;

-- Applies up to max_batches due batches of the inbox, each in its own transaction: the lease is
-- committed first (so another worker skips the batch, and takes it over if this one dies), then
-- the batch is applied, as the role and with the JWT claims that submitted it, and settled
-- together. No lock is waited for longer than the lease. Code that runs inside a batch (a
-- trigger, a default) could RESET ROLE to the session's user, so that user may be neither a
-- superuser nor a member of the extension's owner: a worker role of its own, a member of the
-- submitters' roles. Schedule it with pg_cron from several workers if need be; it cannot run
-- inside a transaction block. `report` counts the batches by the state they were left in
-- ("lost": another worker took one over).
CREATE PROCEDURE flex_sync_ingest_work(max_batches integer DEFAULT 100, lease_seconds integer DEFAULT 60,
                                       max_attempts integer DEFAULT 8, INOUT report jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_lease record;
    v_result jsonb;
    v_state text;
    v_sqlstate text;
    v_message text;
    v_role text := pg_catalog.current_setting('role');
    v_claims text := coalesce(pg_catalog.current_setting('request.jwt.claims', true), '');
BEGIN
    IF max_batches IS NULL OR max_batches NOT BETWEEN 1 AND 100000
       OR lease_seconds IS NULL OR lease_seconds NOT BETWEEN 1 AND 86400
       OR max_attempts IS NULL OR max_attempts NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'flex_sync: max_batches must be 1 to 100000, lease_seconds 1 to 86400 and max_attempts 1 to 100'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.pg_has_role(session_user, (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'flex_sync'), 'MEMBER') THEN
        RAISE EXCEPTION 'flex_sync: the inbox''s worker may not run as % (a superuser, or a member of the extension''s owner)', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a batch runs as its submitter, and its code could RESET ROLE to the session''s user: log in as a role of its own, '
                         'e.g. CREATE ROLE flex_ingest_worker LOGIN; GRANT authenticated TO flex_ingest_worker; '
                         'SELECT flex_sync_ingest_grant(''flex_ingest_worker'', worker => true)';
    END IF;
    report := '{"done": 0, "queued": 0, "dead": 0, "lost": 0}';
    -- Inside a transaction block the leases could not be committed: refused (2D000) before any.
    COMMIT;
    FOR n IN 1 .. max_batches LOOP
        -- The worker's own settings (the session's defaults, with the caller's role and JWT claims:
        -- nothing else it SET before the CALL is kept), whatever a batch's code set.
        RESET ALL;
        PERFORM pg_catalog.set_config('role', v_role, false);
        PERFORM pg_catalog.set_config('request.jwt.claims', v_claims, false);
        SELECT * INTO v_lease FROM flex_sync_private.ingest_lease(lease_seconds, max_attempts);
        -- Committed either way: the lease step's advisory lock ends with its transaction.
        COMMIT;
        EXIT WHEN v_lease.id IS NULL;
        BEGIN
            -- Ended with the block: its abort, or the COMMIT after it, puts the worker's back.
            PERFORM pg_catalog.set_config('lock_timeout', (lease_seconds * 1000)::text, true);
            PERFORM pg_catalog.set_config('request.jwt.claims', coalesce(v_lease.submitted_claims, ''), true);
            PERFORM pg_catalog.set_config('role', v_lease.submitted_by, true);
            v_result := @extschema@.flex_sync_ingest(v_lease.device_id, v_lease.batch);
            -- A second line of defence: an operation whose code changed the role already fails its
            -- record's device check and is rolled back with the change.
            IF pg_catalog.current_setting('role') IS DISTINCT FROM v_lease.submitted_by::text THEN
                RAISE EXCEPTION 'flex_sync: code inside inbox batch % changed the role it ran as', v_lease.id
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            -- Nothing the batch's code set for the session reaches what runs next as the worker
            -- (the settle, the commit, the next lease); RESET ALL leaves the role to be restored.
            RESET ALL;
            -- Checks the batch's code deferred are made here, where a failure fails the batch.
            SET CONSTRAINTS ALL IMMEDIATE;
            PERFORM pg_catalog.set_config('role', v_role, true);
            PERFORM pg_catalog.set_config('request.jwt.claims', v_claims, true);
            v_state := flex_sync_private.ingest_settle(v_lease.id, v_lease.fence, v_result, NULL, NULL, max_attempts);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
            v_state := 'lost';
            IF v_sqlstate <> 'FS002' THEN
                BEGIN
                    v_state := flex_sync_private.ingest_settle(v_lease.id, v_lease.fence, NULL, v_sqlstate, v_message, max_attempts);
                EXCEPTION WHEN SQLSTATE 'FS002' THEN
                    v_state := 'lost';
                END;
            END IF;
        END;
        COMMIT;
        report := pg_catalog.jsonb_set(report, ARRAY[v_state], pg_catalog.to_jsonb((report ->> v_state)::integer + 1));
    END LOOP;
END
$$;

-- Dead batches back in the inbox with their attempts, result and error cleared: one batch, or
-- all with NULL.
-- Returns how many.
CREATE FUNCTION flex_sync_ingest_requeue(inbox_id bigint DEFAULT NULL)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH revived AS (
        UPDATE flex_sync_private.ingest_inbox i
        SET state = 'queued', attempts = 0, due_at = now(), finished_at = NULL, result = NULL, last_error = NULL
        WHERE i.state = 'dead' AND (inbox_id IS NULL OR i.id = inbox_id)
        RETURNING 1
    )
    SELECT count(*)::integer FROM revived;
$$;

-- Lets `grantee` (for example authenticated) send batches: flex_sync_ingest and the helpers it
-- calls as its caller, flex_sync_ingest_submit and flex_sync_ingest_result; with `worker`, also
-- run the inbox (the procedure and its lease and settle steps). An update resets the ACLs to the
-- README's list: call it again after ALTER EXTENSION flex_sync UPDATE.
CREATE FUNCTION flex_sync_ingest_grant(grantee name, worker boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA flex_sync_private TO %I', grantee);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.flex_sync_ingest(text, jsonb), @extschema@.flex_sync_ingest_submit(text, jsonb),
                        @extschema@.flex_sync_ingest_result(text, bigint), flex_sync_private.ingest_check_arguments(text, jsonb),
                        flex_sync_private.ingest_admit(text, boolean), flex_sync_private.ingest_catalog(), flex_sync_private.ingest_links(jsonb),
                        flex_sync_private.ingest_order(jsonb, jsonb), flex_sync_private.ingest_apply(text, jsonb, jsonb, text),
                        flex_sync_private.ingest_claim(text, text, text, text, jsonb),
                        flex_sync_private.ingest_record(text, text, text, text, uuid, jsonb),
                        flex_sync_private.ingest_failure(text, jsonb, text, text), flex_sync_private.ingest_retryable(text)
                    TO %I', grantee);
    IF worker THEN
        EXECUTE format('GRANT EXECUTE ON PROCEDURE @extschema@.flex_sync_ingest_work(integer, integer, integer, jsonb) TO %I', grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION flex_sync_private.ingest_lease(integer, integer),
                            flex_sync_private.ingest_settle(bigint, bigint, jsonb, text, text, integer) TO %I', grantee);
    END IF;
END
$$;

CREATE  FUNCTION flex_sync_private."guard_hold_reason"(
	"deletes" bigint,
	"rows" bigint,
	"source_rows" bigint,
	"max_delete_fraction" double precision
) RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'guard_hold_reason_wrapper';

CREATE  FUNCTION flex_sync_private."ingest_order"(
	"batch" jsonb,
	"links" jsonb
) RETURNS TABLE (
	"position" INT,
	"problem" TEXT
)
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_order_wrapper';

CREATE  FUNCTION flex_sync_private."ingest_retryable"(
	"sqlstate" TEXT
) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_retryable_wrapper';

SELECT flex_sync_private.restrict_acls();
