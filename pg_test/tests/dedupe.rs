//! flex_dedupe_assignments(): the DBA's cleanup of duplicate rows from the old races.

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::{json, Value};

const FOUR: [(&str, &str); 4] = [("sound", "SND-FOH-R"), ("sound", "SND-RF-E"), ("sound", "SND-PA-T"), ("sound", "")];

fn dedupe(client: &mut Client, dry_run: bool) -> Value {
    let text: String = client
        .query_one("SELECT flex_dedupe_assignments($1)::text", &[&dry_run])
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn drop_constraint(client: &mut Client) {
    client
        .batch_execute("ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key")
        .unwrap();
}

/// A synced job whose table then lost its constraint and got duplicates, as the old races left
/// it: for tech 0 two extra rows (one older than the original, one with NULL created_at), for
/// tech 1 one extra row pointing at a second Flex contact of the same resource.
fn racy_job(test: &str) -> (TestDb, Sim, Job, Client, String) {
    let (db, sim, mut client) = rig(test, json!({}));
    let job = create_job(&mut client, &["sound"], &FOUR);
    sync(&mut client, &job.id);
    drop_constraint(&mut client);
    let extra_contact = sim.add_by_hand(&job.elements["sound"], &[job.technicians[1].resource.as_str()]).remove(0);
    client
        .execute(
            "INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT crew_call_id, technician_id, flex_line_item_id, created_at - interval '1 day'
             FROM flex_crew_assignments WHERE technician_id = $1::text::uuid",
            &[&job.technicians[0].id],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT crew_call_id, technician_id, flex_line_item_id, NULL
             FROM flex_crew_assignments WHERE technician_id = $1::text::uuid LIMIT 1",
            &[&job.technicians[0].id],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT crew_call_id, technician_id, $2::text::uuid, created_at + interval '1 minute'
             FROM flex_crew_assignments WHERE technician_id = $1::text::uuid",
            &[&job.technicians[1].id, &extra_contact],
        )
        .unwrap();
    (db, sim, job, client, extra_contact)
}

fn table_fingerprint(client: &mut Client) -> String {
    client
        .query_one("SELECT string_agg(a::text, ',' ORDER BY a::text) FROM flex_crew_assignments a", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_dry_run_reports_and_changes_nothing() {
    let (_db, _sim, _job, mut client, extra) = racy_job("dedupe_dry");
    let before = table_fingerprint(&mut client);
    let report = dedupe(&mut client, true);
    assert_eq!(report["duplicate_groups"], 2, "{report}");
    assert_eq!(report["rows_to_remove"], 3);
    assert_eq!(report["rows_removed"], 0);
    assert_eq!(report["constraint"], "would_create");
    assert_eq!(report["orphaned_flex_lines"][0]["flex_line_item_id"], extra.as_str());
    assert_eq!(report["orphaned_flex_line_count"], 1, "tech 0's removed rows share the kept row's line: {report}");
    assert_eq!(table_fingerprint(&mut client), before);
    let audit: i64 = client.query_one("SELECT count(*) FROM flex_dedupe_audit", &[]).unwrap().get(0);
    assert_eq!(audit, 0);
    // A plain read: it runs in a read-only transaction (as on a standby) and reports the same.
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET TRANSACTION READ ONLY").unwrap();
    let text: String = tx.query_one("SELECT flex_dedupe_assignments(true)::text", &[]).unwrap().get(0);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), report);
    tx.rollback().unwrap();
    // NULL is neither: refused, as the real run it would otherwise half be.
    let err = client.query_one("SELECT flex_dedupe_assignments(NULL)", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22004", "{err}");
    assert_eq!(table_fingerprint(&mut client), before);
}

#[test]
fn keeps_the_oldest_audits_exactly_the_removed_rows_and_is_idempotent() {
    let (_db, sim, job, mut client, extra) = racy_job("dedupe_real");
    let oldest: String = client
        .query_one(
            "SELECT id::text FROM flex_crew_assignments WHERE technician_id = $1::text::uuid ORDER BY created_at NULLS LAST, id LIMIT 1",
            &[&job.technicians[0].id],
        )
        .unwrap()
        .get(0);
    let all_before: Vec<String> = client
        .query("SELECT id::text FROM flex_crew_assignments", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let report = dedupe(&mut client, false);
    assert_eq!((report["duplicate_groups"].as_i64(), report["rows_removed"].as_i64()), (Some(2), Some(3)), "{report}");
    assert_eq!(report["constraint"], "created");
    let kept: String = client
        .query_one("SELECT id::text FROM flex_crew_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap()
        .get(0);
    assert_eq!(kept, oldest, "the oldest row by (created_at, id) stays; NULL created_at is last");
    let remaining: Vec<String> = client
        .query("SELECT id::text FROM flex_crew_assignments", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut audited: Vec<String> = client
        .query("SELECT removed_row ->> 'id' FROM flex_dedupe_audit WHERE batch_id = $1::text::uuid", &[&report["audit_batch"].as_str().unwrap()])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut removed: Vec<String> = all_before.into_iter().filter(|id| !remaining.contains(id)).collect();
    audited.sort();
    removed.sort();
    assert_eq!(audited, removed, "the audit holds exactly the removed rows");

    let again = dedupe(&mut client, false);
    assert_eq!((again["duplicate_groups"].as_i64(), again["rows_removed"].as_i64()), (Some(0), Some(0)));
    assert_eq!(again["constraint"], "existed");

    // The extra Flex contact only a removed row pointed at goes with the next sync, even under
    // orphan_policy 'keep' (the dedupe marked it as the sync's own).
    configure(&mut client, &sim, json!({"orphan_policy": "keep"}));
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["duplicates_removed"], 1, "{result}");
    assert!(!sim.contacts(&job.elements["sound"]).iter().any(|c| c.0 == extra));
    assert_converged(&mut client, &sim, &job);
}

/// A removed row's Flex line stays accounted for when a kept row of the same crew call points at
/// it, another technician's included; a row of another crew call does not keep it.
#[test]
fn a_line_is_orphaned_only_when_no_kept_row_of_its_crew_call_points_at_it() {
    let db = TestDb::create("dedupe_orphans");
    let mut client = db.connect();
    let job = create_job(&mut client, &["sound", "lights"], &FOUR);
    drop_constraint(&mut client);
    let (x, y) = ("00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b");
    client
        .execute(
            "WITH c AS (SELECT id, department FROM flex_crew_calls WHERE job_id = $1::text::uuid),
                  t AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM profiles
                        WHERE id = ANY ($2::text[]::uuid[]))
             INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT c.id, t.id, v.line::uuid, now() - v.age
             FROM (VALUES ('sound', 1, gen_random_uuid()::text, interval '2 days'),
                          ('sound', 1, $3, interval '1 day'),   -- removed: its line X ...
                          ('sound', 2, $3, interval '1 day'),   -- ... is kept by another technician's row
                          ('sound', 3, gen_random_uuid()::text, interval '2 days'),
                          ('sound', 3, $4, interval '1 day'),   -- removed: its line Y ...
                          ('lights', 1, $4, interval '1 day'))  -- ... only another crew call points at
                  AS v(department, tech, line, age)
             JOIN c ON c.department = v.department JOIN t ON t.n = v.tech",
            &[&job.id, &job.technicians.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), &x, &y],
        )
        .unwrap();
    let report = dedupe(&mut client, true);
    assert_eq!((report["duplicate_groups"].as_i64(), report["rows_to_remove"].as_i64()), (Some(2), Some(2)), "{report}");
    assert_eq!(report["orphaned_flex_line_count"], 1, "{report}");
    assert_eq!(report["orphaned_flex_lines"][0]["flex_line_item_id"], y, "{report}");
    assert_eq!(report["orphaned_flex_lines"][0]["flex_element_id"], job.elements["sound"].as_str(), "{report}");
    let real = dedupe(&mut client, false);
    assert_eq!(real["orphaned_flex_lines"], report["orphaned_flex_lines"], "{real}");
    assert_eq!(real["flex_lines_marked_for_removal"], 1, "{real}");
}

#[test]
fn an_existing_unique_index_under_any_name_is_detected() {
    let db = TestDb::create("dedupe_name");
    let mut client = db.connect();
    drop_constraint(&mut client);
    client
        .batch_execute("CREATE UNIQUE INDEX whatever_the_app_called_it ON flex_crew_assignments (technician_id, crew_call_id)")
        .unwrap();
    let report = dedupe(&mut client, false);
    assert_eq!(report["constraint"], "existed");
    assert_eq!(report["constraint_name"], "whatever_the_app_called_it");
    let indexes: i64 = client
        .query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'flex_crew_assignments'", &[])
        .unwrap()
        .get(0);
    assert_eq!(indexes, 2, "primary key and the app's index; no second unique index");
}

/// INCLUDE columns are fine; a deferrable constraint is refused by the sync and the dedupe with
/// 42P16 and its fix in the hint, as ON CONFLICT cannot use it (nor any other index beside it).
#[test]
fn an_include_index_counts_and_a_deferrable_constraint_is_refused_by_name() {
    let (_db, _sim, mut client) = rig("dedupe_index_kinds", json!({}));
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    drop_constraint(&mut client);
    client
        .batch_execute(
            "ALTER TABLE flex_crew_assignments ADD CONSTRAINT pair_deferred UNIQUE (crew_call_id, technician_id)
                 DEFERRABLE INITIALLY DEFERRED",
        )
        .unwrap();
    let err = client.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job.id]).unwrap_err();
    let err = err.as_db_error().unwrap();
    assert_eq!(err.code().code(), "42P16", "{err:?}");
    assert!(err.message().contains("pair_deferred") && err.hint().unwrap().contains("DROP CONSTRAINT"), "{err:?}");
    // The dedupe refuses it too: no index it could add would let the sync run beside it.
    let err = dedupe_error(&mut client, false);
    assert_eq!(err.code().code(), "42P16", "{err:?}");
    assert!(err.message().contains("pair_deferred"), "{err:?}");
    client.batch_execute("ALTER TABLE flex_crew_assignments DROP CONSTRAINT pair_deferred").unwrap();

    client
        .batch_execute(
            "CREATE UNIQUE INDEX pair_with_line ON flex_crew_assignments (crew_call_id, technician_id) INCLUDE (flex_line_item_id);",
        )
        .unwrap();
    let report = dedupe(&mut client, false);
    assert_eq!((report["constraint"].as_str(), report["constraint_name"].as_str()), (Some("existed"), Some("pair_with_line")));
    assert_eq!(sync(&mut client, &job.id)["ok"], true);
}

/// A failed CREATE UNIQUE INDEX CONCURRENTLY (it meets the duplicates) leaves an invalid index;
/// under the name the dedupe gives its own it is named in the refusal before anything changes.
#[test]
fn an_invalid_index_left_under_the_dedupes_name_is_refused_before_anything_changes() {
    let (_db, _sim, _job, mut client, _) = racy_job("dedupe_invalid");
    let failed = client.batch_execute(
        "CREATE UNIQUE INDEX CONCURRENTLY flex_crew_assignments_crew_call_id_technician_id_key
             ON flex_crew_assignments (crew_call_id, technician_id)",
    );
    assert_eq!(failed.unwrap_err().as_db_error().unwrap().code().code(), "23505", "the build meets the duplicates");
    let before = table_fingerprint(&mut client);
    let err = dedupe_error(&mut client, false);
    assert_eq!(err.code().code(), "42P07", "{err:?}");
    assert!(err.hint().unwrap().contains("DROP INDEX"), "{err:?}");
    assert_eq!(table_fingerprint(&mut client), before);
    assert_eq!(audit_rows(&mut client), 0);
    client.batch_execute("DROP INDEX flex_crew_assignments_crew_call_id_technician_id_key").unwrap();
    let report = dedupe(&mut client, false);
    assert_eq!((report["rows_removed"].as_i64(), report["constraint"].as_str()), (Some(3), Some("created")), "{report}");
}

#[test]
fn not_executable_by_public() {
    let db = TestDb::create("dedupe_grant");
    let mut client = db.connect();
    client.batch_execute("CREATE ROLE dedupe_outsider").unwrap_or(());
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE dedupe_outsider").unwrap();
    let err = tx.query_one("SELECT flex_dedupe_assignments(true)", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
}

#[test]
fn a_dedupe_among_concurrent_syncs_never_deadlocks_and_leaves_no_duplicates() {
    let (db, sim, job, mut client, _) = racy_job("dedupe_concurrent");
    // The syncs refuse a table without the constraint; one dedupe restores it while they retry.
    let (first_call_done, first_calls) = std::sync::mpsc::channel::<()>();
    let syncs: Vec<_> = (0..6)
        .map(|_| {
            let (first_call_done, conninfo, job_id) = (first_call_done.clone(), db.conninfo.clone(), job.id.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                let mut ok = 0;
                let mut calls = 0;
                let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while ok < 3 && std::time::Instant::now() < end {
                    let outcome = c.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job_id]);
                    calls += 1;
                    if calls == 1 {
                        let _ = first_call_done.send(());
                    }
                    match outcome {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            let code = e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default();
                            assert_eq!(code, "42P16", "only 'no unique constraint yet' is expected: {e}");
                        }
                    }
                }
                ok
            })
        })
        .collect();
    // The dedupe starts once every sync has made its first call (refused or done) and goes on
    // calling, not after a guessed pause.
    for _ in 0..6 {
        first_calls.recv_timeout(std::time::Duration::from_secs(20)).expect("every sync gets going");
    }
    let report = dedupe(&mut client, false);
    assert_eq!(report["rows_removed"], 3, "{report}");
    let ok: i32 = syncs.into_iter().map(|h| h.join().expect("no deadlock, no unexpected error")).sum();
    assert!(ok > 0);
    sync(&mut client, &job.id);
    assert_converged(&mut client, &sim, &job);
}

fn dedupe_error(client: &mut Client, dry_run: bool) -> postgres::error::DbError {
    let err = client.query_one("SELECT flex_dedupe_assignments($1)", &[&dry_run]).unwrap_err();
    err.as_db_error().expect("a server error").clone()
}

fn audit_rows(client: &mut Client) -> i64 {
    client.query_one("SELECT count(*) FROM flex_dedupe_audit", &[]).unwrap().get(0)
}

/// No below-SQL type checks any more: a table whose line ids (and row ids) are text is deduped
/// like the reference one.
#[test]
fn text_line_and_row_ids_simply_work() {
    let (_db, _sim, job, mut client, extra) = racy_job("dedupe_types");
    client
        .batch_execute(
            "ALTER TABLE flex_crew_assignments ALTER flex_line_item_id TYPE text;
             ALTER TABLE flex_crew_assignments ALTER id DROP DEFAULT, ALTER id TYPE text;",
        )
        .unwrap();
    let oldest: String = client
        .query_one(
            "SELECT id FROM flex_crew_assignments WHERE technician_id = $1::text::uuid
             ORDER BY created_at NULLS LAST, id LIMIT 1",
            &[&job.technicians[0].id],
        )
        .unwrap()
        .get(0);
    let dry = dedupe(&mut client, true);
    assert_eq!((dry["duplicate_groups"].as_i64(), dry["rows_to_remove"].as_i64()), (Some(2), Some(3)), "{dry}");
    let report = dedupe(&mut client, false);
    assert_eq!((report["rows_removed"].as_i64(), report["constraint"].as_str()), (Some(3), Some("created")), "{report}");
    assert_eq!(report["orphaned_flex_line_count"], 1, "{report}");
    assert_eq!(report["orphaned_flex_lines"][0]["flex_line_item_id"], extra.as_str());
    let kept: String = client
        .query_one("SELECT id FROM flex_crew_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap()
        .get(0);
    assert_eq!(kept, oldest);
    assert_eq!(audit_rows(&mut client), 3);
    assert_no_duplicate_rows(&mut client);
}

/// The function is plain SQL run as its owner, so row-level security applies to it as to any
/// query of that role: it never decides on, deletes or audits a row its owner may not see, and
/// it cannot claim a constraint over rows it could not see.
#[test]
fn row_level_security_applies_to_the_owner_by_construction() {
    let (_db, _sim, job, mut client, _extra) = racy_job("dedupe_rls");
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE dedupe_owner NOSUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER FUNCTION flex_dedupe_assignments(boolean) OWNER TO dedupe_owner;
             GRANT USAGE ON SCHEMA flex_sync_private TO dedupe_owner;
             GRANT EXECUTE ON FUNCTION flex_sync_private.pair_unique_index(), flex_sync_private.pair_unique_indexes() TO dedupe_owner;",
        )
        .unwrap();
    // An owner that may not read the table gets PostgreSQL's own refusal.
    let err = dedupe_error(&mut client, true);
    assert_eq!(err.code().code(), "42501", "{err:?}");
    assert!(err.message().contains("permission denied for table flex_crew_assignments"), "{err:?}");

    // An owner that owns the table (and may create its index) but is held to a policy hiding
    // technician 1's rows.
    client
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA public TO dedupe_owner;
             GRANT SELECT ON flex_crew_calls TO dedupe_owner;
             GRANT INSERT ON flex_dedupe_audit TO dedupe_owner;
             ALTER TABLE flex_crew_assignments OWNER TO dedupe_owner;
             ALTER TABLE flex_crew_assignments ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY hide_one ON flex_crew_assignments USING (technician_id <> '{}');",
            job.technicians[1].id
        ))
        .unwrap();
    let before = table_fingerprint(&mut client);
    let dry = dedupe(&mut client, true);
    assert_eq!((dry["duplicate_groups"].as_i64(), dry["rows_to_remove"].as_i64()), (Some(1), Some(2)), "{dry}");
    // The visible twins would go, but the hidden ones keep the unique index from being built:
    // PostgreSQL refuses it and the whole call is undone.
    let err = dedupe_error(&mut client, false);
    assert_eq!(err.code().code(), "23505", "{err:?}");
    assert_eq!(table_fingerprint(&mut client), before, "nothing changed");
    assert_eq!(audit_rows(&mut client), 0);

    // A policy that hides only a technician without twins: everything the owner sees is deduped
    // and the hidden row is left alone.
    client
        .batch_execute(&format!(
            "ALTER POLICY hide_one ON flex_crew_assignments USING (technician_id <> '{}');",
            job.technicians[2].id
        ))
        .unwrap();
    let report = dedupe(&mut client, false);
    assert_eq!((report["rows_removed"].as_i64(), report["constraint"].as_str()), (Some(3), Some("created")), "{report}");
    let hidden: i64 = client
        .query_one("SELECT count(*) FROM flex_crew_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[2].id])
        .unwrap()
        .get(0);
    assert_eq!(hidden, 1);
    assert_no_duplicate_rows(&mut client);
}

/// A hash-partitioned flex_crew_assignments without the unique constraint and without a
/// primary key on id (a partitioned table cannot have one): duplicates go, the audit holds
/// them, the unique index is created on the partitioned table, and the server stays up.
#[test]
fn a_hash_partitioned_table_is_deduped() {
    let db = TestDb::create("dedupe_partitioned");
    let mut client = db.connect();
    create_job(&mut client, &["sound", "lights", "video"], &FOUR);
    client
        .batch_execute(
            "DROP TABLE flex_crew_assignments;
             CREATE TABLE flex_crew_assignments (
                 id                uuid NOT NULL DEFAULT gen_random_uuid(),
                 crew_call_id      uuid NOT NULL REFERENCES flex_crew_calls (id) ON DELETE CASCADE,
                 technician_id     uuid NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
                 flex_line_item_id uuid NOT NULL,
                 created_at        timestamptz DEFAULT now()
             ) PARTITION BY HASH (crew_call_id);
             CREATE TABLE flex_crew_assignments_p0 PARTITION OF flex_crew_assignments FOR VALUES WITH (MODULUS 4, REMAINDER 0);
             CREATE TABLE flex_crew_assignments_p1 PARTITION OF flex_crew_assignments FOR VALUES WITH (MODULUS 4, REMAINDER 1);
             CREATE TABLE flex_crew_assignments_p2 PARTITION OF flex_crew_assignments FOR VALUES WITH (MODULUS 4, REMAINDER 2);
             CREATE TABLE flex_crew_assignments_p3 PARTITION OF flex_crew_assignments FOR VALUES WITH (MODULUS 4, REMAINDER 3);
             -- One row per (crew call, technician), the job's three crew calls by four technicians.
             INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT c.id, p.id, gen_random_uuid(), now() - interval '1 hour'
             FROM flex_crew_calls c CROSS JOIN profiles p;
             -- Every pair gets an older twin and a newer one: the older one is kept.
             INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT crew_call_id, technician_id, gen_random_uuid(), created_at - interval '1 day' FROM flex_crew_assignments;
             INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id, created_at)
             SELECT crew_call_id, technician_id, flex_line_item_id, NULL
             FROM flex_crew_assignments WHERE created_at < now() - interval '2 hours';
             -- Then one exact copy of one keeper, same id and all: it goes, the keeper stays.
             INSERT INTO flex_crew_assignments
             SELECT * FROM flex_crew_assignments ORDER BY created_at NULLS LAST, id LIMIT 1;",
        )
        .unwrap();
    let pairs: i64 = client
        .query_one("SELECT count(DISTINCT (crew_call_id, technician_id)) FROM flex_crew_assignments", &[])
        .unwrap()
        .get(0);
    assert_eq!(pairs, 12);
    let oldest: Vec<(String, String)> = client
        .query(
            "SELECT DISTINCT ON (crew_call_id, technician_id) crew_call_id::text || technician_id::text, id::text
             FROM flex_crew_assignments ORDER BY crew_call_id, technician_id, created_at NULLS LAST, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let dry = dedupe(&mut client, true);
    assert_eq!((dry["duplicate_groups"].as_i64(), dry["rows_to_remove"].as_i64()), (Some(12), Some(25)), "{dry}");
    assert_eq!(dry["constraint"], "would_create");
    // The newest twin's line is its own; the NULL-dated twin shares the keeper's line.
    assert_eq!(dry["orphaned_flex_line_count"], 12, "{dry}");

    let report = dedupe(&mut client, false);
    assert_eq!((report["duplicate_groups"].as_i64(), report["rows_removed"].as_i64()), (Some(12), Some(25)), "{report}");
    assert_eq!(report["constraint"], "created", "{report}");
    assert_eq!(report["orphaned_flex_lines"].as_array().map(Vec::len), Some(12));
    assert!(report["orphaned_flex_lines"][0]["flex_element_id"].is_string(), "{report}");

    // The server is still up and answers another connection.
    let one: i32 = db.connect().query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);

    let kept: Vec<(String, String)> = client
        .query(
            "SELECT crew_call_id::text || technician_id::text, id::text FROM flex_crew_assignments
             ORDER BY crew_call_id, technician_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kept, oldest, "exactly the oldest row of each pair is left, the copied keeper included");
    let audited: i64 = client
        .query_one(
            "SELECT count(*) FROM flex_dedupe_audit WHERE batch_id = $1::text::uuid",
            &[&report["audit_batch"].as_str().unwrap()],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 25);
    let unique_on_parent: bool = client
        .query_one(
            "SELECT i.indisunique FROM pg_index i
             WHERE i.indrelid = 'flex_crew_assignments'::regclass
               AND i.indexrelid = 'flex_crew_assignments_crew_call_id_technician_id_key'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(unique_on_parent);
    let err = client
        .execute(
            "INSERT INTO flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id)
             SELECT crew_call_id, technician_id, flex_line_item_id FROM flex_crew_assignments LIMIT 1",
            &[],
        )
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "23505");

    let again = dedupe(&mut client, false);
    assert_eq!((again["duplicate_groups"].as_i64(), again["rows_removed"].as_i64()), (Some(0), Some(0)), "{again}");
    assert_eq!(again["constraint"], "existed");
    assert_eq!(again["constraint_name"], "flex_crew_assignments_crew_call_id_technician_id_key");
}

/// A view (or a foreign table) named flex_crew_assignments is refused before anything is read
/// or written: it can neither keep writers out nor carry the unique index.
#[test]
fn a_view_or_a_foreign_table_is_refused_and_nothing_changes() {
    let (_db, _sim, _job, mut client, _extra) = racy_job("dedupe_view");
    client
        .batch_execute(
            "ALTER TABLE flex_crew_assignments RENAME TO flex_crew_assignments_data;
             CREATE VIEW flex_crew_assignments AS SELECT * FROM flex_crew_assignments_data;",
        )
        .unwrap();
    let fingerprint = |client: &mut Client| -> String {
        client
            .query_one("SELECT string_agg(a::text, ',' ORDER BY a::text) FROM flex_crew_assignments_data a", &[])
            .unwrap()
            .get(0)
    };
    let indexes = |client: &mut Client| -> i64 {
        client.query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'flex_crew_assignments_data'", &[]).unwrap().get(0)
    };
    let before = (fingerprint(&mut client), indexes(&mut client));
    for dry_run in [true, false] {
        let err = dedupe_error(&mut client, dry_run);
        assert_eq!(err.code().code(), "42809", "wrong_object_type: {err:?}");
        assert!(err.message().contains("is a view, not a table"), "{err:?}");
        assert!(err.hint().is_some_and(|h| h.contains("nothing was changed")), "{err:?}");
    }
    assert_eq!((fingerprint(&mut client), indexes(&mut client)), before);
    assert_eq!(audit_rows(&mut client), 0);

    // A foreign table: a wrapper without a handler is enough, as nothing may be read from it.
    client
        .batch_execute(
            "DROP VIEW flex_crew_assignments;
             CREATE FOREIGN DATA WRAPPER dedupe_nowhere;
             CREATE SERVER dedupe_nowhere FOREIGN DATA WRAPPER dedupe_nowhere;
             CREATE FOREIGN TABLE flex_crew_assignments (id uuid, crew_call_id uuid, technician_id uuid,
                                                         flex_line_item_id uuid, created_at timestamptz)
                 SERVER dedupe_nowhere;",
        )
        .unwrap();
    for dry_run in [true, false] {
        let err = dedupe_error(&mut client, dry_run);
        assert_eq!(err.code().code(), "42809", "{err:?}");
        assert!(err.message().contains("is a foreign table, not a table"), "{err:?}");
    }
    assert_eq!((fingerprint(&mut client), indexes(&mut client)), before);
    assert_eq!(audit_rows(&mut client), 0);
}
