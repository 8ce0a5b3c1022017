-- flex_sync 1.2.0 to 1.3.0: the source-preserving merge (flex_sync_merge, its watermarks,
-- conflicts, audit and log) and the guard's rule for SQL (flex_sync_private.guard_hold_reason).
-- Objects are created exactly as a fresh 1.3.0 install creates them.

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

SELECT flex_sync_private.restrict_acls();
