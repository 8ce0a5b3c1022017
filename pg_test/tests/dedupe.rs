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
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(7));
    let syncs: Vec<_> = (0..6)
        .map(|_| {
            let (barrier, conninfo, job_id) = (barrier.clone(), db.conninfo.clone(), job.id.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                barrier.wait();
                let mut ok = 0;
                let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while ok < 3 && std::time::Instant::now() < end {
                    match c.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job_id]) {
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
    barrier.wait();
    std::thread::sleep(std::time::Duration::from_millis(50));
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

#[test]
fn a_column_of_another_type_is_refused_with_its_name_and_nothing_changes() {
    let (_db, _sim, _job, mut client, _extra) = racy_job("dedupe_types");
    client.batch_execute("ALTER TABLE flex_crew_assignments ALTER flex_line_item_id TYPE text").unwrap();
    let before = table_fingerprint(&mut client);
    for dry_run in [true, false] {
        let err = dedupe_error(&mut client, dry_run);
        assert_eq!(err.code().code(), "42804", "datatype_mismatch: {err:?}");
        assert!(err.message().contains("flex_line_item_id must be of type uuid"), "{err:?}");
        assert!(err.hint().is_some_and(|h| h.contains("timestamptz")), "{err:?}");
    }
    assert_eq!(table_fingerprint(&mut client), before);
    let audit: i64 = client.query_one("SELECT count(*) FROM flex_dedupe_audit", &[]).unwrap().get(0);
    assert_eq!(audit, 0);
}

/// The rows are read below SQL, so the owner's right to read them all is checked there: the
/// delete would otherwise act on other rows than the ones decided on.
#[test]
fn an_owner_that_may_not_read_every_row_is_refused() {
    let (_db, _sim, _job, mut client, _extra) = racy_job("dedupe_rls");
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE dedupe_owner NOSUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT USAGE ON SCHEMA flex_sync_private TO dedupe_owner;
             GRANT EXECUTE ON FUNCTION flex_sync_private.dedupe_plan(oid) TO dedupe_owner;
             GRANT SELECT ON flex_crew_calls TO dedupe_owner;
             ALTER FUNCTION flex_dedupe_assignments(boolean) OWNER TO dedupe_owner;",
        )
        .unwrap();
    let err = dedupe_error(&mut client, true);
    assert_eq!(err.code().code(), "42501", "{err:?}");
    assert!(err.message().contains("may not SELECT"), "{err:?}");

    client
        .batch_execute(
            "GRANT SELECT ON flex_crew_assignments TO dedupe_owner;
             ALTER TABLE flex_crew_assignments ENABLE ROW LEVEL SECURITY;",
        )
        .unwrap();
    let err = dedupe_error(&mut client, true);
    assert_eq!(err.code().code(), "42501", "{err:?}");
    assert!(err.message().contains("row-level security"), "{err:?}");

    client.batch_execute("ALTER TABLE flex_crew_assignments DISABLE ROW LEVEL SECURITY").unwrap();
    assert_eq!(dedupe(&mut client, true)["duplicate_groups"], 2);
}
