-- The result of every public function, as a caller sees it. Values that change from run to run
-- (ids, times, durations) are shown by their keys or types only.
\getenv sim_url FLEX_SIM_URL
CREATE EXTENSION flex_sync;
SELECT flex_sync_install_reference_schema();
SELECT flex_sync_enable_queue();
-- configure: the effective settings, the token masked, every option with its value.
SELECT jsonb_pretty(flex_sync_configure(:'sim_url', 'sim-token', '{"allow_insecure_loopback": true}') - 'base_url');
SELECT base_url = :'sim_url' AS base_url_kept, api_token FROM flex_sync_settings;
INSERT INTO jobs (id, title) VALUES ('00000000-0000-4000-8000-000000000a01', 'shapes');
INSERT INTO profiles (id, department, flex_resource_id) VALUES
    ('00000000-0000-4000-8000-000000000b01', 'sound', 'shape-res-1'),
    ('00000000-0000-4000-8000-000000000b02', 'sound', 'shape-res-2'),
    ('00000000-0000-4000-8000-000000000b03', 'sound', 'shape-res-3');
INSERT INTO flex_crew_calls (id, job_id, department, flex_element_id) VALUES
    ('00000000-0000-4000-8000-0000000000cc', '00000000-0000-4000-8000-000000000a01', 'sound', '00000000-0000-4000-8000-000000000c01');
INSERT INTO job_assignments (job_id, technician_id, sound_role, status) VALUES
    ('00000000-0000-4000-8000-000000000a01', '00000000-0000-4000-8000-000000000b01', 'SND-FOH-R', 'confirmed'),
    ('00000000-0000-4000-8000-000000000a01', '00000000-0000-4000-8000-000000000b02', NULL, 'invited');
-- flex_sync_job: the Edge Function's shape, one entry per department.
CREATE TEMP TABLE first_sync AS
SELECT flex_sync_job('00000000-0000-4000-8000-000000000a01', ARRAY['sound', 'lights']) AS r;
SELECT r ->> 'ok' AS ok, r ->> 'job_id' AS job_id, (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(r) k) AS keys
FROM first_sync;
SELECT d AS department, s ->> 'status' AS status, s ->> 'skip' AS skip, s ->> 'note' AS note,
       (s ->> 'added')::int AS added, (s ->> 'rolesSet')::int AS roles_set, (s ->> 'desired_count')::int AS desired,
       (s ->> 'flex_calls')::int AS flex_calls, s -> 'errors' AS errors, s -> 'business_role_diagnostics' AS diagnostics
FROM first_sync, jsonb_each(r -> 'summary') AS e(d, s) ORDER BY d;
SELECT array_agg(k ORDER BY k) AS summary_keys FROM first_sync, jsonb_object_keys(r -> 'summary' -> 'sound') k;
-- Nothing to change: one listing, nothing written but its log row.
SELECT s ->> 'status' AS status, (s ->> 'kept')::int AS kept, (s ->> 'flex_calls')::int AS flex_calls
FROM (SELECT flex_sync_job('00000000-0000-4000-8000-000000000a01') -> 'summary' -> 'sound' AS s) x;
SELECT department, status, added, removed, kept, roles_set, failed, flex_calls, errors, triggered_by
FROM flex_sync_log ORDER BY id;
-- The queue: the function form's report, and the procedure's (printed by key: it has a duration).
UPDATE job_assignments SET status = 'declined' WHERE technician_id = '00000000-0000-4000-8000-000000000b01';
SELECT job_id, department, marks, attempts, next_attempt_at IS NULL AS never_failed, dead FROM flex_sync_queue;
SELECT r - 'duration_ms' AS report, (r ->> 'duration_ms') IS NOT NULL AS has_duration
FROM (SELECT flex_sync_pending() AS r) x;
DO $$
DECLARE
    report jsonb;
BEGIN
    CALL flex_sync_run_queue(report => report);
    RAISE NOTICE 'procedure report: % with %', report - 'duration_ms', (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(report) k);
END
$$;
SELECT flex_sync_requeue() AS requeued, flex_sync_resume() AS pause_ended;
-- flex_sync_plan: the sync's checks and lock, one listing, nothing written. With nothing to
-- change it plans nothing.
SELECT count(*) AS log_rows_before FROM flex_sync_log \gset
SELECT p ->> 'job_id' AS job_id, s ->> 'status' AS status, (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(s) k) AS keys,
       jsonb_array_length(s -> 'adds') + jsonb_array_length(s -> 'deletes') + jsonb_array_length(s -> 'role_changes') AS actions
FROM (SELECT flex_sync_plan('00000000-0000-4000-8000-000000000a01') AS p) x, LATERAL (SELECT p -> 'plan' -> 'sound' AS s) y;
-- The last technician leaves: the plan shows the delete and that the guard would hold it; the
-- sync holds it (and says why); the queue keeps the item held, not retried; force applies it.
UPDATE job_assignments SET status = 'declined' WHERE technician_id = '00000000-0000-4000-8000-000000000b02';
SELECT s ->> 'status' AS status, jsonb_array_length(s -> 'deletes') AS deletes, s -> 'deletes' -> 0 ->> 'reason' AS reason,
       s -> 'held' ->> 'reason' AS held_reason, s -> 'held' ->> 'note' AS note
FROM (SELECT flex_sync_plan('00000000-0000-4000-8000-000000000a01') -> 'plan' -> 'sound' AS s) x;
SELECT count(*) - :log_rows_before AS log_rows_written_by_plans FROM flex_sync_log;
SELECT r ->> 'ok' AS ok, s ->> 'status' AS status, (s ->> 'removed')::int AS removed,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(s -> 'held') k) AS held_keys,
       s -> 'held' ->> 'reason' AS held_reason, (s -> 'held' ->> 'contacts')::int AS contacts,
       jsonb_array_length(s -> 'held' -> 'deletes') AS held_deletes
FROM (SELECT flex_sync_job('00000000-0000-4000-8000-000000000a01') AS r) x, LATERAL (SELECT r -> 'summary' -> 'sound' AS s) y;
SELECT r - 'duration_ms' AS report FROM (SELECT flex_sync_pending() AS r) x;
SELECT department, held_reason FROM flex_sync_held_items;
SELECT department, marks, attempts, dead, held, next_attempt_at FROM flex_sync_queue;
SELECT r - 'duration_ms' AS report FROM (SELECT flex_sync_pending() AS r) x;
SELECT s ->> 'status' AS status, (s ->> 'removed')::int AS removed
FROM (SELECT flex_sync_job('00000000-0000-4000-8000-000000000a01', force => true) -> 'summary' -> 'sound' AS s) x;
SELECT count(*) AS held_items FROM flex_sync_held_items;
-- flex_sync_drift: one listing per crew call, the result kept per crew call.
SELECT r - 'drifted' AS report, jsonb_array_length(r -> 'drifted') AS drifted FROM (SELECT flex_sync_drift() AS r) x;
SELECT department, in_sync, missing, extra, duplicated, wrong_role, rows_astray FROM flex_sync_drift_status;
INSERT INTO job_assignments (job_id, technician_id, sound_role, status) VALUES
    ('00000000-0000-4000-8000-000000000a01', '00000000-0000-4000-8000-000000000b03', 'SND-PA-T', 'confirmed');
SELECT r - 'drifted' AS report, d ->> 'department' AS department, d -> 'drift' -> 'missing' AS missing
FROM (SELECT flex_sync_drift(max_crew_calls => 5) AS r) x, jsonb_array_elements(r -> 'drifted') d;
SELECT department, in_sync, missing, extra FROM flex_sync_drift_status;
SELECT (flex_sync_job('00000000-0000-4000-8000-000000000a01') -> 'summary' -> 'sound' ->> 'added')::int AS added;
-- flex_sync_merge: its result, dry and real, incremental and full.
CREATE TABLE merge_target (id integer PRIMARY KEY, name text, owner text);
CREATE TABLE merge_source (id integer, name text, changed_at timestamptz, note text);
INSERT INTO merge_target VALUES (2, 'theirs', 'M'), (3, 'ours, gone from the source', 'D');
INSERT INTO merge_source VALUES (1, 'new', '2025-01-01', 'x'), (2, 'clash', '2025-01-02', 'y');
SELECT jsonb_pretty(flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D',
                                    '{"cursor_column": "changed_at", "dry_run": true}') - 'duration_ms');
SELECT jsonb_pretty(flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D',
                                    '{"cursor_column": "changed_at"}') - 'duration_ms');
SELECT r - 'duration_ms' AS full_merge FROM (SELECT flex_sync_merge('merge_target', 'merge_source', ARRAY['id'], 'owner', 'D',
                                                                    '{"mode": "full"}') AS r) x;
SELECT id, name, owner FROM merge_target ORDER BY id;
SELECT target, owner, key, target_owner, source_row ->> 'name' AS source_name, target_row ->> 'name' AS target_name
FROM flex_merge_conflicts;
SELECT target, owner, key, removed_row ->> 'name' AS removed FROM flex_merge_audit;
SELECT target, owner, mode, inserted, updated, unchanged, conflicts, deleted, held FROM flex_merge_log ORDER BY id;
DROP TABLE merge_target, merge_source;
-- flex_sync_ingest: a batch with its children first, a replay, the inbox and its views. Server
-- ids are random: shown as whether each result has one, and whether the map agrees.
CREATE TABLE ingest_customers (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE ingest_sales (id uuid PRIMARY KEY, customer_id uuid REFERENCES ingest_customers, total numeric CHECK (total >= 0));
SELECT flex_sync_ingest_register('ingest_customers');
SELECT flex_sync_ingest_register('ingest_sales');
SELECT jsonb_pretty(flex_sync_private.ingest_catalog());
CREATE FUNCTION public.shown(r jsonb) RETURNS TABLE (op_id text, status text, has_server_id boolean, error text, retryable boolean, in_id_map boolean)
LANGUAGE sql AS $$
    SELECT e ->> 'op_id', e ->> 'status', e ->> 'server_id' IS NOT NULL, e ->> 'error', (e ->> 'retryable')::boolean,
           EXISTS (SELECT 1 FROM jsonb_each_text(r -> 'id_map') m WHERE m.value = e ->> 'server_id')
    FROM jsonb_array_elements(r -> 'results') e;
$$;
CREATE TEMP TABLE ingest_batch AS SELECT '[
  {"op_id": "o1", "table": "ingest_sales", "local_id": "s1", "action": "upsert", "data": {"customer_id": "c1", "total": 10}},
  {"op_id": "o2", "table": "ingest_customers", "local_id": "c1", "action": "upsert", "data": {"name": "Ann"}},
  {"op_id": "o3", "table": "ingest_sales", "local_id": "s2", "action": "upsert", "data": {"customer_id": "c1", "total": -1}},
  {"op_id": "o4", "table": "ingest_sales", "local_id": "s3", "action": "upsert", "data": {"customer_id": "c9", "total": 1}},
  {"op_id": "o5", "table": "ingest_customers", "local_id": "c2", "action": "delete"}]'::jsonb AS batch;
SELECT * FROM public.shown(flex_sync_ingest('tablet', (SELECT batch FROM ingest_batch)));
SELECT * FROM public.shown(flex_sync_ingest('tablet', (SELECT batch FROM ingest_batch)));
SELECT jsonb_object_keys(flex_sync_ingest('tablet', (SELECT batch FROM ingest_batch))) AS result_keys;
SELECT c.name, s.total FROM ingest_sales s JOIN ingest_customers c ON c.id = s.customer_id;
-- The inbox: a device's role submits, a worker of its own (no superuser) applies it as that role.
DO $$ BEGIN CREATE ROLE regress_ingest_tablet NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE regress_ingest_worker LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT regress_ingest_tablet TO regress_ingest_worker;
SELECT flex_sync_ingest_grant('regress_ingest_tablet'), flex_sync_ingest_grant('regress_ingest_worker', worker => true);
GRANT SELECT, INSERT, UPDATE ON ingest_customers, ingest_sales TO regress_ingest_tablet;
SET ROLE regress_ingest_tablet;
SELECT flex_sync_ingest_submit('phone', '[{"op_id": "o6", "table": "ingest_customers", "local_id": "c9", "action": "upsert", "data": {"name": "Cy"}}]') AS inbox_id;
RESET ROLE;
\c - regress_ingest_worker
CALL flex_sync_ingest_work();
\c - postgres
SELECT id, device_id, submitted_by, state, attempts, fence, leased_by, operations, last_error FROM flex_sync_ingest_inbox;
SELECT r ->> 'state' AS state, r ->> 'attempts' AS attempts, r ->> 'error' AS error, s.*
FROM flex_sync_ingest_result('phone', 1) r, public.shown(r -> 'result') s;
SELECT flex_sync_ingest_result('tablet', 1) AS another_devices_batch;
SELECT device_id, caller FROM flex_sync_private.ingest_devices;
SELECT * FROM flex_sync_ingest_dead;
SELECT flex_sync_ingest_requeue() AS requeued;
DROP TABLE ingest_sales, ingest_customers;
DROP FUNCTION public.shown(jsonb);
DELETE FROM flex_sync_private.ingest_tables;
DROP OWNED BY regress_ingest_tablet, regress_ingest_worker;
DROP ROLE regress_ingest_worker, regress_ingest_tablet;
-- The dedupe's report, dry and real, over a crew call with a duplicate row.
ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key;
INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
SELECT crew_call_id, technician_id, '00000000-0000-4000-8000-0000000000d1', created_at + interval '1 minute'
FROM flex_crew_assignments;
SELECT jsonb_pretty(flex_dedupe_assignments(dry_run => true));
SELECT jsonb_pretty(r - 'audit_batch'), r ->> 'audit_batch' = (SELECT DISTINCT batch_id::text FROM flex_dedupe_audit) AS audit_batch_is_the_audits
FROM (SELECT flex_dedupe_assignments() AS r) x;
SELECT technician_id, flex_line_item_id, removed_row ->> 'flex_line_item_id' AS removed_line FROM flex_dedupe_audit;
-- Leave the database as it was for the next file.
DROP TABLE IF EXISTS flex_crew_assignments, flex_crew_calls, job_assignments, profiles, jobs;
DROP EXTENSION flex_sync;
