//! The dirty-job queue, flex_sync_pending(), its backoff, two schedulers at once, pg_cron for
//! real, and the health views.

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

/// flex_sync_pending() while its listing call is held for 1 s, with `during` run 300 ms in:
/// after the sync read the crew, before the scheduler clears the marks it saw. Its report.
fn pending_while_listing_is_held(db: &TestDb, sim: &Sim, during: impl FnOnce()) -> Value {
    sim.set_faults(json!([{"endpoint": "list", "kind": "latency", "ms": 1000, "times": 1}]));
    let scheduler = pending_in_background(&db.conninfo);
    std::thread::sleep(Duration::from_millis(300));
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
            "SELECT cron.schedule_in_database($1, '* * * * *', 'SELECT flex_sync_pending()', $2)",
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
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(queue_depth(&mut client), 0);
    let by: String = client.query_one("SELECT triggered_by FROM flex_sync_log LIMIT 1", &[]).unwrap().get(0);
    assert_eq!(by, "postgres");
    drop(db);
}
