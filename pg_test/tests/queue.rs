//! The dirty-job queue: the procedure that commits per item (flex_sync_run_queue) and the
//! function form (flex_sync_pending), backoff and dead items, two schedulers at once, the
//! profile marking rule, log retention, the budget pause, pg_cron for real, and the health views.

use std::time::{Duration, Instant};

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::{json, Value};

fn pending(client: &mut Client) -> Value {
    let text: String = client.query_one("SELECT flex_sync_pending()::text", &[]).unwrap().get(0);
    serde_json::from_str(&text).unwrap()
}

/// flex_sync_pending() from a connection of its own.
fn pending_in_background(conninfo: &str) -> std::thread::JoinHandle<Value> {
    let conninfo = conninfo.to_string();
    std::thread::spawn(move || pending(&mut Client::connect(&conninfo, postgres::NoTls).unwrap()))
}

/// flex_sync_pending() while its listing call is held for 1 s, with `during` run once Flex has
/// that call: after the sync read the crew, before the scheduler clears the marks it saw. Its
/// report.
fn pending_while_listing_is_held(db: &TestDb, sim: &Sim, during: impl FnOnce()) -> Value {
    sim.set_faults(json!([{"endpoint": "list", "kind": "latency", "ms": 1000, "times": 1}]));
    sim.reset_calls();
    let scheduler = pending_in_background(&db.conninfo);
    wait_for("the sync's listing to reach Flex", Duration::from_secs(10), || sim.calls().get("list").copied().unwrap_or(0) >= 1);
    during();
    scheduler.join().unwrap()
}

fn queue_depth(client: &mut Client) -> i64 {
    client.query_one("SELECT count(*) FROM flex_sync_queue", &[]).unwrap().get(0)
}

fn setup(test: &str) -> (TestDb, Sim, Client) {
    let (db, sim, mut client) = rig(test, json!({}));
    client.batch_execute("SELECT flex_sync_enable_queue()").unwrap();
    (db, sim, client)
}

#[test]
fn an_assignment_change_reaches_flex_through_the_queue() {
    let (_db, sim, mut client) = setup("queue_basic");
    let job = create_job(&mut client, &["sound", "lights"], &[("sound", "SND-PA-T"), ("lights", "LGT-PA-T")]);
    assert_eq!(queue_depth(&mut client), 2, "crew calls and assignments marked both departments");
    let report = pending(&mut client);
    assert_eq!(report["synced"], 2, "{report}");
    assert_eq!(queue_depth(&mut client), 0);
    assert_converged(&mut client, &sim, &job);
    // A resource change marks the technician's jobs again.
    client
        .execute("UPDATE profiles SET flex_resource_id = 'moved' WHERE id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap();
    assert!(queue_depth(&mut client) >= 1);
    pending(&mut client);
    assert!(sim.contacts(&job.elements["sound"]).iter().any(|c| c.1 == "moved"));
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_change_made_during_the_sync_keeps_the_item_due() {
    let (db, sim, mut client) = setup("queue_generation");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    let report = pending_while_listing_is_held(&db, &sim, || {
        add_technician(&mut client, &job.id, "sound", "SND-FOH-R", "joined-mid-sync");
    });
    assert_eq!(report["synced"], 1, "{report}");
    assert_eq!(queue_depth(&mut client), 1, "the mark made during the sync is still there");
    pending(&mut client);
    assert_eq!(queue_depth(&mut client), 0);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_mark_committed_after_a_later_one_is_not_cleared_unsynced() {
    let (db, sim, mut client) = setup("queue_out_of_order");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    pending(&mut client);
    assert_eq!(queue_depth(&mut client), 0);
    // The slow writer takes the smaller mark id and commits last: after the sync read the crew
    // and before the scheduler clears the marks it saw.
    let mut slow = db.connect();
    slow.batch_execute("BEGIN").unwrap();
    add_technician(&mut slow, &job.id, "sound", "SND-FOH-R", "slow-writer");
    add_technician(&mut client, &job.id, "sound", "SND-MON-E", "fast-writer");
    let report = pending_while_listing_is_held(&db, &sim, || slow.batch_execute("COMMIT").unwrap());
    assert_eq!(report["synced"], 1, "{report}");
    let resources: Vec<String> = sim.contacts(&job.elements["sound"]).into_iter().map(|c| c.1).collect();
    assert!(resources.contains(&"fast-writer".to_string()) && !resources.contains(&"slow-writer".to_string()));
    assert_eq!(queue_depth(&mut client), 1, "the slow writer's mark was not seen, so it stays");
    pending(&mut client);
    assert_eq!(queue_depth(&mut client), 0);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn failures_back_off_then_die_and_can_be_requeued() {
    let (_db, sim, mut client) = setup("queue_backoff");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    sim.set_faults(json!([{"endpoint": "list", "kind": "status", "status": 500}]));
    let first: Value = serde_json::from_str(
        &client.query_one("SELECT flex_sync_pending(50, 50, 2)::text", &[]).unwrap().get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(first["failed"], 1, "{first}");
    let (attempts, due_later, error): (i32, bool, String) = {
        let row = client
            .query_one("SELECT attempts, next_attempt_at > now(), last_error FROM flex_sync_queue", &[])
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(attempts, 1);
    assert!(due_later, "backed off");
    assert!(error.starts_with("flex_http_500"), "{error}");
    let not_due = pending(&mut client);
    assert_eq!((not_due["synced"].as_i64(), not_due["failed"].as_i64()), (Some(0), Some(0)), "{not_due}");
    // Make it due now and fail again: with max_attempts 2 it is dead.
    client.batch_execute("UPDATE flex_sync_private.retry_state SET next_attempt_at = now()").unwrap();
    client.query_one("SELECT flex_sync_pending(50, 50, 2)", &[]).unwrap();
    let dead: i64 = client.query_one("SELECT count(*) FROM flex_sync_dead_items", &[]).unwrap().get(0);
    assert_eq!(dead, 1);
    sim.clear_faults();
    assert_eq!(pending(&mut client)["synced"], 0, "dead items are not retried");
    let revived: i32 = client.query_one("SELECT flex_sync_requeue()", &[]).unwrap().get(0);
    assert_eq!(revived, 1);
    assert_eq!(pending(&mut client)["synced"], 1);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn two_schedulers_never_sync_one_item_at_the_same_time() {
    let (db, sim, mut client) = setup("queue_two");
    let jobs: Vec<Job> = (0..6).map(|_| create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")])).collect();
    sim.set_faults(json!([{"endpoint": "list", "kind": "latency", "ms": 150}]));
    let schedulers: Vec<_> = (0..2)
        .map(|_| pending_in_background(&db.conninfo))
        .collect();
    let reports: Vec<Value> = schedulers.into_iter().map(|h| h.join().unwrap()).collect();
    let synced: i64 = reports.iter().map(|r| r["synced"].as_i64().unwrap()).sum();
    assert!(synced >= 6, "{reports:?}");
    let overlapping: i64 = client
        .query_one(
            "SELECT count(*) FROM flex_sync_log a JOIN flex_sync_log b
               ON a.job_id = b.job_id AND a.department = b.department AND a.id < b.id
              AND a.status <> 'skipped' AND b.status <> 'skipped'
              AND tstzrange(a.started_at, a.started_at + make_interval(secs => a.duration_ms / 1000.0))
               && tstzrange(b.started_at, b.started_at + make_interval(secs => b.duration_ms / 1000.0))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "no item was synced by both at once");
    assert_eq!(queue_depth(&mut client), 0);
    for job in &jobs {
        assert_converged(&mut client, &sim, job);
    }
}

#[test]
fn health_views_report_syncs_failures_and_the_queue() {
    let (_db, sim, mut client) = setup("queue_views");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    sync(&mut client, &job.id);
    sim.set_faults(json!([{"endpoint": "list", "kind": "status", "status": 503}]));
    sync(&mut client, &job.id);
    let row = client
        .query_one("SELECT syncs_24h, success_rate_pct::float8, p95_duration_ms IS NOT NULL, queue_depth FROM flex_sync_health", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, f64>(1), 50.0);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i64>(3), 1, "the crew call is still dirty: only the queue clears marks");
    let code: String = client.query_one("SELECT error_code FROM flex_sync_recent_failures", &[]).unwrap().get(0);
    assert_eq!(code, "flex_http_503");
    let last: String = client
        .query_one("SELECT status FROM flex_sync_last_sync WHERE job_id = $1::text::uuid", &[&job.id])
        .unwrap()
        .get(0);
    assert_eq!(last, "failed");
}

#[test]
fn pg_cron_drives_the_queue_without_anyone_calling_flex_sync_job() {
    let (db, sim, mut client) = setup("queue_cron");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    let dbname: String = client.query_one("SELECT current_database()", &[]).unwrap().get(0);
    let mut admin = Client::connect(&server_conninfo(), postgres::NoTls).unwrap();
    admin.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron").unwrap();
    let cron_job: i64 = admin
        .query_one(
            "SELECT cron.schedule_in_database($1, '* * * * *', 'CALL flex_sync_run_queue()', $2)",
            &[&format!("flex_sync_{dbname}"), &dbname],
        )
        .unwrap()
        .get(0);
    // pg_cron 1.4 schedules by the minute: wait for the next one.
    let deadline = Instant::now() + Duration::from_secs(130);
    while sim.contacts(&job.elements["sound"]).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    admin.execute("SELECT cron.unschedule($1::bigint)", &[&cron_job]).unwrap();
    assert_eq!(sim.contacts(&job.elements["sound"]).len(), 1, "the scheduled run synced the crew");
    wait_for("the scheduled run to commit the item", Duration::from_secs(10), || queue_depth(&mut client) == 0);
    let mut cron_status = String::new();
    wait_for("pg_cron to record the run", Duration::from_secs(10), || {
        let row = admin
            .query_opt(
                "SELECT status || ' ' || coalesce(return_message, '') FROM cron.job_run_details
                 WHERE jobid = $1 AND status NOT IN ('starting', 'running') ORDER BY start_time LIMIT 1",
                &[&cron_job],
            )
            .unwrap();
        cron_status = row.map(|r| r.get(0)).unwrap_or_default();
        !cron_status.is_empty()
    });
    assert!(cron_status.starts_with("succeeded"), "pg_cron ran the procedure, commits and all: {cron_status}");
    let by: String = client.query_one("SELECT triggered_by FROM flex_sync_log LIMIT 1", &[]).unwrap().get(0);
    assert_eq!(by, "postgres");
    drop(db);
}

/// CALL flex_sync_run_queue() from a connection of its own.
fn run_queue_in_background(conninfo: &str) -> std::thread::JoinHandle<Value> {
    let conninfo = conninfo.to_string();
    std::thread::spawn(move || run_queue(&mut Client::connect(&conninfo, postgres::NoTls).unwrap(), ""))
}

fn log_rows(client: &mut Client, job: &str) -> i64 {
    client
        .query_one("SELECT count(*) FROM flex_sync_log WHERE job_id = $1::text::uuid", &[&job])
        .unwrap()
        .get(0)
}

/// Jobs of one technician each that the queue must add to Flex, adds slowed to 400 ms: a run
/// over all of them takes seconds, a sync with nothing to add takes none of that.
fn slow_run_setup(test: &str, jobs: usize) -> (TestDb, Sim, Client, Vec<Job>) {
    let (db, sim, mut client) = setup(test);
    let jobs: Vec<Job> = (0..jobs).map(|_| create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")])).collect();
    sim.set_faults(json!([{"endpoint": "add", "kind": "latency", "ms": 400}]));
    (db, sim, client, jobs)
}

#[test]
fn an_interactive_sync_of_an_item_the_run_did_waits_for_nothing_while_the_run_goes_on() {
    let (db, sim, mut client, jobs) = slow_run_setup("queue_per_item_commit", 8);
    let run = run_queue_in_background(&db.conninfo);
    let first = &jobs[0].id;
    // Its log row is visible: the run committed the first item.
    wait_for("the run to commit its first item", Duration::from_secs(30), || log_rows(&mut client, first) == 1);
    let started = Instant::now();
    let result = sync(&mut client, first);
    let waited = started.elapsed();
    let done_meanwhile: i64 = client
        .query_one("SELECT count(DISTINCT job_id) FROM flex_sync_log WHERE triggered_by = 'postgres' AND job_id <> $1::text::uuid", &[first])
        .unwrap()
        .get(0);
    assert!(!run.is_finished(), "the run was still going when the interactive sync returned");
    let sound = &result["summary"]["sound"];
    assert_eq!((sound["status"].as_str(), sound["added"].as_i64()), (Some("ok"), Some(0)), "{result}");
    assert!(sound["lock_wait_ms"].as_u64().unwrap() < 500, "{result}");
    assert!(waited < Duration::from_millis(500), "the interactive sync took {waited:?}");
    let report = run.join().unwrap();
    assert_eq!(report["synced"], 8, "{report}");
    assert!(done_meanwhile < 8, "the run had items left: {done_meanwhile}");
    for job in &jobs {
        assert_converged(&mut client, &sim, job);
    }
}

/// The function form keeps every item it did to its own transaction: what the procedure is for.
#[test]
fn the_function_form_holds_what_it_did_until_it_returns() {
    let (db, sim, mut client, jobs) = slow_run_setup("queue_function_form", 4);
    let run = pending_in_background(&db.conninfo);
    let first = &jobs[0];
    wait_for("the run to add the first crew in Flex", Duration::from_secs(30), || {
        !sim.contacts(&first.elements["sound"]).is_empty()
    });
    let busy: Value = serde_json::from_str(
        &client
            .query_one("SELECT flex_sync_job($1::text::uuid, wait_for_lock => false)::text", &[&first.id])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(busy["summary"]["sound"]["status"], "skipped", "its lock is still held: {busy}");
    assert_eq!(log_rows(&mut client, &first.id), 1, "only the skipped sync's own row is visible");
    assert_eq!(run.join().unwrap()["synced"], 4);
    assert_eq!(log_rows(&mut client, &first.id), 2);
}

#[test]
fn the_procedure_refuses_a_transaction_block_before_it_syncs_anything() {
    let (_db, sim, mut client) = setup("queue_in_transaction");
    create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    sim.reset_calls();
    client.batch_execute("BEGIN").unwrap();
    let err = client.batch_execute("CALL flex_sync_run_queue()").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "2D000", "{err}");
    client.batch_execute("ROLLBACK").unwrap();
    assert_eq!(sim.total_calls(), 0);
    assert_eq!(queue_depth(&mut client), 1, "the item is still due");
    let bad = client.batch_execute("CALL flex_sync_run_queue(max_jobs => 0)").unwrap_err();
    assert_eq!(bad.as_db_error().unwrap().code().code(), "22023", "{bad}");
    assert_eq!(run_queue(&mut client, "")["synced"], 1);
}

#[test]
fn an_item_marked_many_times_is_synced_once_per_run() {
    let (_db, sim, mut client) = setup("queue_once_per_run");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    for role in ["SND-FOH-R", "SND-MON-E", "SND-PA-T", "SND-FOH-R"] {
        client
            .execute("UPDATE job_assignments SET sound_role = $2 WHERE job_id = $1::text::uuid", &[&job.id, &role])
            .unwrap();
    }
    let marks: i64 = client.query_one("SELECT marks FROM flex_sync_queue", &[]).unwrap().get(0);
    assert!(marks >= 5, "{marks}");
    let report = run_queue(&mut client, "");
    assert_eq!((report["synced"].as_i64(), report["remaining"].as_i64()), (Some(1), Some(0)), "{report}");
    assert_eq!(log_rows(&mut client, &job.id), 1);
    assert_converged(&mut client, &sim, &job);
}

/// Live rows of the private schema's tables this transaction has read so far, by sequential and
/// index scans. Index entries of rows deleted but not yet vacuumed are not rows: a scan passes
/// them until they are marked dead, which depends on every other snapshot in the cluster.
fn private_rows_read(client: &mut Client) -> i64 {
    client
        .query_one(
            // A table's tuples_returned: rows of sequential scans; tuples_fetched: of bitmap
            // scans. An index's tuples_fetched: live rows its plain scans fetched.
            "SELECT coalesce(sum(CASE WHEN c.relkind = 'r' THEN pg_stat_get_xact_tuples_returned(c.oid) ELSE 0 END
                                 + pg_stat_get_xact_tuples_fetched(c.oid)), 0)::bigint
             FROM pg_class c WHERE c.relnamespace = 'flex_sync_private'::regnamespace",
            &[],
        )
        .unwrap()
        .get(0)
}

/// A run of the function form in a transaction of its own: its report and the rows it read.
fn pending_counting_reads(client: &mut Client) -> (Value, i64) {
    client.batch_execute("BEGIN").unwrap();
    let before = private_rows_read(client);
    let report = pending(client);
    let read = private_rows_read(client) - before;
    client.batch_execute("COMMIT").unwrap();
    (report, read)
}

#[test]
fn dead_and_backing_off_items_cost_a_run_nothing() {
    let (_db, sim, mut client) = setup("queue_dead_items");
    // 10,000 dead items and 10,000 backing off, each with a mark made after its last failure,
    // as triggers leave them; the planner's statistics as autovacuum would keep them.
    client
        .batch_execute(
            "INSERT INTO flex_sync_private.retry_state (job_id, department, attempts, next_attempt_at, last_error, dead)
             SELECT gen_random_uuid(), 'sound', 8, now() + interval '1 hour', 'flex_http_500: down', n <= 10000
             FROM generate_series(1, 20000) n;
             INSERT INTO flex_sync_private.dirty (job_id, department) SELECT job_id, department FROM flex_sync_private.retry_state;
             ANALYZE flex_sync_private.retry_state; ANALYZE flex_sync_private.dirty;",
        )
        .unwrap();
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    let (first, first_read) = pending_counting_reads(&mut client);
    assert_eq!((first["synced"].as_i64(), first["remaining"].as_i64()), (Some(1), Some(0)), "{first}");
    assert!(first_read >= 20_000, "the first run folds the 20,000 marks into their retry rows: {first_read}");
    add_technician(&mut client, &job.id, "sound", "SND-FOH-R", "joins-later");
    let (second, second_read) = pending_counting_reads(&mut client);
    assert_eq!(second["synced"], 1, "{second}");
    assert!(second_read < 200, "a run read {second_read} rows with 20,000 items waiting");
    let (dead, waiting, marks): (i64, i64, i64) = {
        let row = client
            .query_one("SELECT count(*) FILTER (WHERE dead), count(*) FILTER (WHERE NOT dead), sum(marks)::bigint FROM flex_sync_queue", &[])
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((dead, waiting, marks), (10_000, 10_000, 0), "folded, not lost");
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_failed_item_waits_in_its_retry_row_and_new_marks_fold_into_it() {
    let (_db, sim, mut client) = setup("queue_fold");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    sim.set_faults(json!([{"endpoint": "list", "kind": "status", "status": 500}]));
    assert_eq!(run_queue(&mut client, "")["failed"], 1);
    let row = client.query_one("SELECT marks, attempts, dirty_since IS NOT NULL FROM flex_sync_queue", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1), row.get::<_, bool>(2)), (0, 1, true));
    add_technician(&mut client, &job.id, "sound", "SND-FOH-R", "while-backing-off");
    sim.clear_faults();
    sim.reset_calls();
    let waiting = run_queue(&mut client, "");
    assert_eq!((waiting["synced"].as_i64(), waiting["failed"].as_i64()), (Some(0), Some(0)), "{waiting}");
    assert_eq!(sim.total_calls(), 0, "not due yet");
    let marks: i64 = client.query_one("SELECT marks FROM flex_sync_queue", &[]).unwrap().get(0);
    assert_eq!(marks, 0, "the new mark went into the retry row");
    client.batch_execute("UPDATE flex_sync_private.retry_state SET next_attempt_at = now()").unwrap();
    assert_eq!(run_queue(&mut client, "")["synced"], 1);
    assert_eq!(queue_depth(&mut client), 0);
    assert_converged(&mut client, &sim, &job);
}

fn marked_jobs(client: &mut Client) -> Vec<String> {
    strings(client, "SELECT DISTINCT job_id::text FROM flex_sync_queue ORDER BY 1", &[])
}

#[test]
fn a_profile_change_marks_the_jobs_that_have_not_ended_at_most_500() {
    let (_db, _sim, mut client) = setup("queue_profile_rule");
    // The live app's jobs have an end_time; the reference schema's do not.
    client.batch_execute("ALTER TABLE jobs ADD COLUMN end_time timestamptz").unwrap();
    let tech: String = client
        .query_one("INSERT INTO profiles (department, flex_resource_id) VALUES ('sound', 'r1') RETURNING id::text", &[])
        .unwrap()
        .get(0);
    let jobs_ending = |client: &mut Client, ends: &str, n: i32| -> Vec<String> {
        strings(
            client,
            &format!(
                "WITH j AS (INSERT INTO jobs (title, end_time) SELECT 'j', {ends} FROM generate_series(1, $2) RETURNING id),
                      c AS (INSERT INTO flex_crew_calls (job_id, department, flex_element_id)
                            SELECT id, 'sound', gen_random_uuid() FROM j),
                      a AS (INSERT INTO job_assignments (job_id, technician_id, sound_role, status)
                            SELECT id, $1::text::uuid, 'SND-PA-T', 'confirmed' FROM j)
                 SELECT id::text FROM j ORDER BY 1"
            ),
            &[&tech, &n],
        )
    };
    let ended = jobs_ending(&mut client, "now() - interval '1 day'", 1);
    let soon = jobs_ending(&mut client, "now() + interval '1 day'", 1);
    let undated = jobs_ending(&mut client, "NULL", 1);
    let mut open = [soon.clone(), undated.clone()].concat();
    open.sort();
    let change = |client: &mut Client, to: &str| {
        client.batch_execute("DELETE FROM flex_sync_private.dirty").unwrap();
        client.execute("UPDATE profiles SET flex_resource_id = $2 WHERE id = $1::text::uuid", &[&tech, &to]).unwrap();
    };
    change(&mut client, "r2");
    assert_eq!(marked_jobs(&mut client), open, "the ended job {ended:?} is left alone");
    jobs_ending(&mut client, "now() + interval '2 days'", 600);
    change(&mut client, "r3");
    let marked = marked_jobs(&mut client);
    assert_eq!(marked.len(), 500, "bounded");
    assert!(marked.contains(&soon[0]) && !marked.contains(&undated[0]), "soonest-ending first, undated last");
    // One overridable rule: a DBA's replacement is what the trigger uses.
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION flex_sync_private.jobs_to_mark_for_profile(p_technician_id uuid)
             RETURNS SETOF uuid LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
             AS $$ SELECT NULL::uuid WHERE false $$",
        )
        .unwrap();
    change(&mut client, "r4");
    assert!(marked_jobs(&mut client).is_empty());
}

/// EXPLAIN (ANALYZE, BUFFERS) of `sql`: whether any node reads flex_sync_log without an index,
/// and the buffers the whole statement touched.
fn plan_of(client: &mut Client, sql: &str) -> (bool, i64) {
    let text = client
        .simple_query(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"))
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    let plan: Value = serde_json::from_str(&text).unwrap();
    fn walk(node: &Value, seq_scan: &mut bool) {
        if node["Node Type"] == "Seq Scan" && node["Relation Name"] == "flex_sync_log" {
            *seq_scan = true;
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, seq_scan);
        }
    }
    let top = &plan[0]["Plan"];
    let mut seq_scan = false;
    walk(top, &mut seq_scan);
    let buffers = top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    (seq_scan, buffers)
}

#[test]
fn retention_prunes_in_batches_and_the_health_views_use_indexes_at_a_million_log_rows() {
    let (_db, _sim, mut client) = setup("queue_retention");
    // 1,000,000 rows over 35 days, 1,000 crew calls, one in twenty failed.
    client
        .batch_execute(
            "INSERT INTO flex_sync_log (job_id, department, started_at, duration_ms, status, errors, triggered_by)
             SELECT md5((n % 1000)::text)::uuid, 'sound', now() - interval '35 days' * n / 1000000, n % 900,
                    CASE WHEN n % 20 = 0 THEN 'failed' ELSE 'ok' END,
                    CASE WHEN n % 20 = 0 THEN '[\"flex_http_503: unavailable\"]'::jsonb ELSE '[]' END, 'cron'
             FROM generate_series(1, 1000000) n;
             ANALYZE flex_sync_log;",
        )
        .unwrap();
    let pages: i64 = client.query_one("SELECT relpages::bigint FROM pg_class WHERE oid = 'flex_sync_log'::regclass", &[]).unwrap().get(0);
    let one_job = "SELECT * FROM flex_sync_last_sync WHERE job_id = md5('7')::uuid";
    for view in ["SELECT * FROM flex_sync_health", "SELECT * FROM flex_sync_recent_failures", one_job] {
        let (seq_scan, buffers) = plan_of(&mut client, view);
        assert!(!seq_scan, "{view} reads the log without an index");
        // The last 24 hours are a 35th of the log.
        assert!(buffers * 10 < pages, "{view} touched {buffers} of the log's {pages} pages");
    }
    let old: i64 = client
        .query_one("SELECT count(*) FROM flex_sync_log WHERE started_at < now() - interval '30 days'", &[])
        .unwrap()
        .get(0);
    assert!(old > 100_000, "{old}");
    let report = run_queue(&mut client, "");
    // Rows keep crossing the line as time passes: count what is left after the run.
    let (left, total): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE started_at < now() - interval '30 days'), count(*) FROM flex_sync_log",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(left, 0, "{report}");
    let pruned = report["pruned"].as_i64().unwrap();
    assert_eq!(total, 1_000_000 - pruned, "{report}");
    assert!(pruned >= old && pruned < old + 1_000, "only rows past the retention went: {pruned} of {old}");
    // The retention is an option like the others, checked when it is set.
    let bad = client
        .execute("SELECT flex_sync_configure(base_url, NULL, '{\"log_retention\": \"forever\"}') FROM flex_sync_settings", &[])
        .unwrap_err();
    assert_eq!(bad.as_db_error().unwrap().code().code(), "22023", "{bad}");
    client
        .execute("SELECT flex_sync_configure(base_url, NULL, '{\"log_retention\": \"1 day\"}') FROM flex_sync_settings", &[])
        .unwrap();
    let shorter = run_queue(&mut client, "");
    let kept: i64 = client
        .query_one("SELECT count(*) FROM flex_sync_log WHERE started_at < now() - interval '1 day'", &[])
        .unwrap()
        .get(0);
    assert!(shorter["pruned"].as_i64().unwrap() > 700_000 && kept == 0, "{shorter}");
}

#[test]
fn a_spent_budget_pauses_the_queue_visibly_until_an_operator_resumes_it() {
    let (_db, sim, mut client) = setup("queue_pause");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T"), ("sound", "SND-FOH-R")]);
    sim.set_config(json!({"hourly_budget": 1}));
    let spent = run_queue(&mut client, "");
    assert_eq!(spent["failed"], 1, "{spent}");
    let health = client
        .query_one("SELECT paused_until > now(), pause_reason FROM flex_sync_health", &[])
        .unwrap();
    assert_eq!((health.get::<_, Option<bool>>(0), health.get::<_, Option<String>>(1)), (Some(true), Some("flex_rate_limited".into())));
    client.batch_execute("UPDATE flex_sync_private.retry_state SET next_attempt_at = now()").unwrap();
    let paused = run_queue(&mut client, "");
    assert!(paused["paused_until"].is_string(), "{paused}");
    assert_eq!((paused["synced"].as_i64(), paused["failed"].as_i64()), (Some(0), Some(0)), "no attempt spent: {paused}");
    sim.set_config(json!({"hourly_budget": 2000}));
    let was: Option<String> = client.query_one("SELECT flex_sync_resume()::text", &[]).unwrap().get(0);
    assert!(was.is_some());
    let cleared: Option<String> = client.query_one("SELECT flex_sync_resume()::text", &[]).unwrap().get(0);
    assert_eq!(cleared, None, "nothing left to resume");
    let health: Option<bool> = client.query_one("SELECT paused_until IS NULL FROM flex_sync_health", &[]).unwrap().get(0);
    assert_eq!(health, Some(true));
    assert_eq!(run_queue(&mut client, "")["synced"], 1);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn an_item_another_session_holds_is_passed_over_with_its_marks_kept() {
    let (db, _sim, mut client) = setup("queue_busy_item");
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    // It failed once and waits for its retry; the crew changed since, so it has marks.
    client
        .execute(
            "INSERT INTO flex_sync_private.retry_state (job_id, department, attempts, next_attempt_at, last_error)
             VALUES ($1::text::uuid, 'sound', 1, now() + interval '1 hour', 'flex_http_500: down')",
            &[&job.id],
        )
        .unwrap();
    let marks = |client: &mut Client| -> i64 { client.query_one("SELECT marks FROM flex_sync_queue", &[]).unwrap().get(0) };
    let marked = marks(&mut client);
    assert!(marked > 0);
    let mut holder = db.connect();
    holder
        .execute("SELECT pg_advisory_lock(k.classid, k.objid) FROM flex_sync_private.item_lock($1::text::uuid, 'sound') k", &[&job.id])
        .unwrap();
    // The sync takes the same lock as the queue.
    let busy: String = client
        .query_one("SELECT (flex_sync_job($1::text::uuid, wait_for_lock => false) -> 'summary' -> 'sound' ->> 'status')", &[&job.id])
        .unwrap()
        .get(0);
    assert_eq!(busy, "skipped");
    let held = run_queue(&mut client, "");
    assert_eq!((held["synced"].as_i64(), held["failed"].as_i64()), (Some(0), Some(0)), "{held}");
    assert_eq!(marks(&mut client), marked, "not folded while the lock is held");
    holder.batch_execute("SELECT pg_advisory_unlock_all()").unwrap();
    let free = run_queue(&mut client, "");
    assert_eq!(free["synced"], 0, "still backing off: {free}");
    assert_eq!(marks(&mut client), 0, "folded into its retry row");
}

#[test]
fn an_item_whose_sync_raises_backs_off_like_any_failure() {
    let (_db, _sim, mut client) = setup("queue_raises");
    // A mark whose job is gone: the sync raises 22023.
    client
        .batch_execute("INSERT INTO flex_sync_private.dirty (job_id, department) VALUES (gen_random_uuid(), 'sound')")
        .unwrap();
    let report = run_queue(&mut client, "max_attempts => 1");
    assert_eq!(report["failed"], 1, "{report}");
    let error: String = client.query_one("SELECT last_error FROM flex_sync_dead_items", &[]).unwrap().get(0);
    assert!(error.starts_with("22023"), "{error}");
    let marks: i64 = client.query_one("SELECT marks FROM flex_sync_queue", &[]).unwrap().get(0);
    assert_eq!(marks, 0);
}
