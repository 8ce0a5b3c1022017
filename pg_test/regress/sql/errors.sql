-- Every error of the SQL surface: its SQLSTATE, message and hint. attempt() runs a statement and
-- shows what it raised.
CREATE FUNCTION pg_temp.attempt(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    message text;
    hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || message || coalesce(E'\n  hint: ' || nullif(hint, ''), '');
END
$$;
\getenv sim_url FLEX_SIM_URL
CREATE EXTENSION flex_sync;
-- Without the application's tables: the authorization rule runs first (it reads profiles only
-- for an authenticated caller), then the first missing table is named.
SELECT pg_temp.attempt($$SELECT flex_sync_job(gen_random_uuid())$$);
SELECT flex_sync_install_reference_schema();
-- Not configured.
INSERT INTO jobs (id, title) VALUES ('00000000-0000-4000-8000-000000000e01', 'errors');
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01')$$);
-- Bad settings change nothing.
SELECT pg_temp.attempt($$SELECT flex_sync_configure('ftp://flex.example/f5/api', 't')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('http://tenant.flexrentalsolutions.com/f5/api', 't')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://10.0.0.7/f5/api', 't')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://user@tenant.flexrentalsolutions.com/f5/api', 't')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '{"max_parallel": 8}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '{"max_parallel_requests": 31}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '{"orphan_policy": "all"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '{"log_retention": "forever"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '{"max_delete_fraction": 1.5}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '{"api_token_vault_secret": "flex_key"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 't', '[1]')$$);
SELECT count(*) AS settings_rows FROM flex_sync_settings;
SELECT 1 FROM flex_sync_configure(:'sim_url', 'sim-token', '{"allow_insecure_loopback": true}');
-- Bad input to the sync: rejected before any Flex call, nothing written.
SELECT pg_temp.attempt($$SELECT flex_sync_job(NULL)$$);
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-0000000000ff')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01', '{}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01', ARRAY[NULL])$$);
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01', ARRAY['catering'])$$);
-- The preview checks its input as the sync does; the drift check its budget.
SELECT pg_temp.attempt($$SELECT flex_sync_plan(NULL)$$);
SELECT pg_temp.attempt($$SELECT flex_sync_plan('00000000-0000-4000-8000-0000000000ff')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_plan('00000000-0000-4000-8000-000000000e01', ARRAY['catering'])$$);
SELECT pg_temp.attempt($$SELECT flex_sync_drift(0)$$);
SELECT pg_temp.attempt($$SELECT flex_sync_drift(NULL)$$);
SELECT pg_temp.attempt($$SELECT flex_sync_drift(1001)$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01')$$);
ROLLBACK;
SELECT count(*) AS log_rows FROM flex_sync_log;
-- Without the unique constraint ON CONFLICT needs, and with a deferrable one.
ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key;
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01')$$);
ALTER TABLE flex_crew_assignments ADD CONSTRAINT pair UNIQUE (crew_call_id, technician_id) DEFERRABLE;
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01')$$);
SELECT pg_temp.attempt($$SELECT flex_dedupe_assignments()$$);
ALTER TABLE flex_crew_assignments DROP CONSTRAINT pair, ADD UNIQUE (crew_call_id, technician_id);
-- A table gone after the session's first calls is named as on the first one.
ALTER TABLE profiles RENAME TO profiles_renamed;
SELECT pg_temp.attempt($$SELECT flex_sync_job('00000000-0000-4000-8000-000000000e01')$$);
ALTER TABLE profiles_renamed RENAME TO profiles;
-- The queue's limits, and the procedure inside a transaction block.
SELECT pg_temp.attempt($$SELECT flex_sync_pending(0)$$);
SELECT pg_temp.attempt($$SELECT flex_sync_pending(max_attempts => 0)$$);
SELECT pg_temp.attempt($$CALL flex_sync_run_queue(max_seconds => NULL)$$);
BEGIN;
SELECT pg_temp.attempt($$CALL flex_sync_run_queue()$$);
ROLLBACK;
-- The merge's checks, all before anything is written.
CREATE TABLE merge_target (id integer PRIMARY KEY, name text, n integer, owner text);
CREATE TABLE merge_source (id integer, name text, n text, changed_at timestamptz);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D', '{"mode": "all"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D', '{"full": true}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D', '{"mode": "full", "lookback": "soon"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D', '{"mode": "full", "max_delete_fraction": 2}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'who', 'D', '{"mode": "full"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D', '{"mode": "full"}')$$);
ALTER TABLE merge_source ALTER COLUMN n TYPE integer USING NULL;
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['name'], 'owner', 'D', '{"mode": "full"}')$$);
INSERT INTO merge_source VALUES (1, 'a', 1, now()), (1, 'b', 2, now());
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D', '{"mode": "full"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', NULL, '{"mode": "full"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_merge('merge_source', 'merge_target', ARRAY['id'], 'owner', 'D', '{"mode": "full"}')$$);
SELECT count(*) AS merged_rows FROM merge_target;
DROP TABLE merge_target, merge_source;
-- The ingest's checks: registration, then whole batches refused before anything is applied.
CREATE TABLE ingest_parent (id uuid PRIMARY KEY, code text);
CREATE TABLE ingest_serial (id serial PRIMARY KEY);
CREATE VIEW ingest_view AS SELECT * FROM ingest_parent;
CREATE SCHEMA ingest_other;
CREATE TABLE ingest_other.ingest_parent (id uuid PRIMARY KEY);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register(NULL)$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_view')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_serial')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY['imei'])$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY[]::text[])$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY['id'])$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY['code'])$$);
CREATE UNIQUE INDEX ingest_parent_code ON ingest_parent (code) NULLS NOT DISTINCT;
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY['code'])$$);
DROP INDEX ingest_parent_code;
ALTER TABLE ingest_parent ADD CONSTRAINT ingest_parent_code_once UNIQUE (code),
                          ADD CONSTRAINT ingest_parent_code_later UNIQUE (code) DEFERRABLE;
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY['code'])$$);
ALTER TABLE ingest_parent DROP CONSTRAINT ingest_parent_code_once, DROP CONSTRAINT ingest_parent_code_later;
CREATE UNIQUE INDEX ingest_parent_code ON ingest_parent (code) INCLUDE (id);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent', ARRAY['code'])$$);
CREATE TABLE ingest_split (id uuid PRIMARY KEY) PARTITION BY HASH (id);
CREATE TABLE ingest_split_0 PARTITION OF ingest_split FOR VALUES WITH (MODULUS 1, REMAINDER 0);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_split_0')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_split')$$);
-- A dropped table's name is free again; unregistering says whether it was registered.
DROP TABLE ingest_split;
CREATE TABLE ingest_split (id uuid PRIMARY KEY);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_split')$$);
SELECT flex_sync_ingest_unregister('ingest_split') AS was_registered, flex_sync_ingest_unregister('ingest_split') AS again;
SELECT name, natural_key FROM flex_sync_private.ingest_tables ORDER BY name;
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_parent')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_register('ingest_other.ingest_parent')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest(NULL, '[]')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest(' ', '[]')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest('d', '{"op_id": "1"}')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest('d', '[1]')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest('d', '[{"table": "ingest_parent"}]')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest('d', '[{"op_id": "1", "table": "ingest_parent", "local_id": "a", "action": "upsert", "data": {}},
                                                        {"op_id": "1", "table": "ingest_parent", "local_id": "b", "action": "upsert", "data": {}}]')$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest('d', (SELECT jsonb_agg(jsonb_build_object('op_id', i::text)) FROM generate_series(1, 1001) i))$$);
SELECT pg_temp.attempt($$SELECT flex_sync_ingest_submit('d', '[{"op_id": ""}]')$$);
SELECT pg_temp.attempt($$CALL flex_sync_ingest_work(max_batches => 0)$$);
SELECT pg_temp.attempt($$CALL flex_sync_ingest_work(lease_seconds => NULL)$$);
SELECT pg_temp.attempt($$CALL flex_sync_ingest_work()$$);
SELECT count(*) AS ingested_rows FROM ingest_parent;
SELECT count(*) AS recorded_operations FROM flex_sync_private.ingest_operations;
SELECT count(*) AS inbox_batches FROM flex_sync_ingest_inbox;
DROP TABLE ingest_parent, ingest_serial, ingest_split, ingest_other.ingest_parent CASCADE;
DROP SCHEMA ingest_other;
DELETE FROM flex_sync_private.ingest_tables;
-- Leave the database as it was for the next file.
DROP TABLE IF EXISTS flex_crew_assignments, flex_crew_calls, job_assignments, profiles, jobs;
DROP EXTENSION flex_sync;
