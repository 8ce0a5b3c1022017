//! The guarded client (README, "The outbound client") against the simulator's fault injection.

use std::time::{Duration, Instant};

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::{json, Value};

const FOUR: [(&str, &str); 4] = [("sound", "SND-FOH-R"), ("sound", "SND-RF-E"), ("sound", "SND-PA-T"), ("sound", "")];

fn setup(test: &str, options: Value) -> (TestDb, Sim, Job, Client) {
    let db = TestDb::create(test);
    let sim = Sim::start();
    let mut client = db.connect();
    configure(&mut client, &sim, options);
    let job = create_job(&mut client, &["sound"], &FOUR);
    (db, sim, job, client)
}

/// Every row of a desired technician points at a contact Flex really has. A row of a technician
/// being removed may outlive its contact when Flex's answer to the delete was lost: the row goes
/// only once Flex confirms, and the next sync finds the line gone.
fn assert_rows_agree_with_flex(client: &mut Client, sim: &Sim, job: &Job) {
    assert_no_duplicate_rows(client);
    let lines: Vec<String> = sim.contacts(&job.elements["sound"]).into_iter().map(|c| c.0).collect();
    let rows = client
        .query(
            "SELECT a.flex_line_item_id::text FROM flex_crew_assignments a
             WHERE a.technician_id IN (SELECT technician_id FROM flex_sync_private.desired_crew($1::text::uuid, 'sound'))",
            &[&job.id],
        )
        .unwrap();
    for row in rows {
        let line: String = row.get(0);
        assert!(lines.contains(&line), "row points at {line}, which Flex does not have");
    }
}

/// After one clean sync the crew needs an add, a role change and two deletes.
fn prepare_changes(client: &mut Client, job: &Job) {
    client
        .execute(
            "DELETE FROM job_assignments WHERE technician_id IN ($1::text::uuid, $2::text::uuid)",
            &[&job.technicians[0].id, &job.technicians[1].id],
        )
        .unwrap();
    client
        .execute("UPDATE job_assignments SET sound_role = 'SND-FOH-R' WHERE technician_id = $1::text::uuid", &[&job.technicians[2].id])
        .unwrap();
    add_technician(client, &job.id, "sound", "SND-MON-E", &format!("late-{}", &job.id[..8]));
}

#[test]
fn fault_matrix_never_corrupts_and_the_next_clean_sync_converges() {
    let faults = [
        json!({"kind": "status", "status": 429}),
        json!({"kind": "status", "status": 500}),
        json!({"kind": "status", "status": 502, "apply": true}),
        json!({"kind": "status", "status": 503}),
        json!({"kind": "status", "status": 302}),
        json!({"kind": "hang", "ms": 1500}),
        json!({"kind": "drop_after_apply"}),
        json!({"kind": "garbage"}),
        json!({"kind": "html"}),
        json!({"kind": "oversized", "bytes": 3_000_000}),
    ];
    let mut combos = 0;
    for endpoint in ["list", "add", "role", "bulk_delete", "delete"] {
        for fault in &faults {
            let name = format!("fm_{endpoint}_{combos}");
            let (_db, sim, mut job, mut client) =
                setup(&name, json!({"request_timeout_ms": 300, "retry_max_attempts": 2, "max_response_bytes": 1_000_000}));
            sync(&mut client, &job.id);
            prepare_changes(&mut client, &job);
            job.technicians.clear();
            if endpoint == "delete" {
                // A tenant that refuses bulk deletes: the sync falls back to single deletes.
                sim.set_config(json!({"bulk_delete_key": "unsupported"}));
            }
            let mut spec = fault.clone();
            spec["endpoint"] = json!(endpoint);
            sim.set_faults(json!([spec]));
            let result = sync(&mut client, &job.id);
            let sound = &result["summary"]["sound"];
            let applied_anyway = matches!(fault["kind"].as_str(), Some("drop_after_apply" | "garbage"))
                || fault["apply"] == true;
            if !(endpoint == "add" && applied_anyway) {
                assert_eq!(result["ok"], false, "{endpoint} {fault}: the fault is reported: {result}");
                assert!(!sound["errors"].as_array().unwrap().is_empty(), "{endpoint} {fault}: {result}");
            }
            assert_rows_agree_with_flex(&mut client, &sim, &job);
            sim.clear_faults();
            let clean = sync(&mut client, &job.id);
            assert_eq!(clean["ok"], true, "{endpoint} {fault}: {clean}");
            assert_converged(&mut client, &sim, &job);
            combos += 1;
        }
    }
    assert_eq!(combos, 50);
}

#[test]
fn pg_cancel_backend_stops_a_sync_stuck_on_a_hanging_call_within_a_second() {
    let (db, sim, job, mut client) = setup("cancel", json!({"request_timeout_ms": 60000, "sync_deadline_ms": 60000}));
    sim.set_faults(json!([{"endpoint": "list", "kind": "hang", "ms": 30000}]));
    sim.reset_calls();
    let conninfo = db.conninfo.clone();
    let job_id = job.id.clone();
    let victim = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let started = Instant::now();
        let result = c.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job_id]).map(|_| ());
        (pid, started.elapsed(), result)
    });
    wait_for("the sync to hang on its listing", Duration::from_secs(10), || sim.calls().get("list").copied().unwrap_or(0) >= 1);
    let cancel_at = Instant::now();
    let cancelled: bool = client
        .query_one(
            "SELECT bool_or(pg_cancel_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'SELECT flex_sync_job%' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    assert!(cancelled);
    let (_, _, result) = victim.join().unwrap();
    let after_cancel = cancel_at.elapsed();
    let err = result.expect_err("the sync was cancelled");
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014", "{err}");
    assert!(after_cancel < Duration::from_secs(1), "took {after_cancel:?} after the cancel");
}

#[test]
fn statement_timeout_stops_a_hanging_sync() {
    let (_db, sim, job, mut client) = setup("stmt_timeout", json!({"request_timeout_ms": 60000, "sync_deadline_ms": 60000}));
    sim.set_faults(json!([{"endpoint": "list", "kind": "hang", "ms": 30000}]));
    client.batch_execute("SET statement_timeout = '1500ms'").unwrap();
    let started = Instant::now();
    let result = client.query_one("SELECT flex_sync_job($1::text::uuid)::text", &[&job.id]);
    // The deadline is derived from statement_timeout, so the sync stops first and reports.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    match result {
        Ok(row) => {
            let result: Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
            assert_eq!(result["summary"]["sound"]["status"], "failed", "{result}");
        }
        Err(e) => assert_eq!(e.as_db_error().unwrap().code().code(), "57014"),
    }
}

#[test]
fn the_sync_deadline_stops_cleanly_and_keeps_rows_true_to_flex() {
    let (_db, sim, job, mut client) = setup("deadline", json!({"sync_deadline_ms": 1200, "max_parallel_requests": 1}));
    sim.set_faults(json!([{"endpoint": "add", "kind": "latency", "ms": 500}]));
    let result = sync(&mut client, &job.id);
    let sound = &result["summary"]["sound"];
    assert_eq!(sound["status"], "partial", "{result}");
    assert!(sound["errors"].to_string().contains("flex_deadline"), "{result}");
    assert_rows_agree_with_flex(&mut client, &sim, &job);
    sim.clear_faults();
    sync(&mut client, &job.id);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn an_oversized_listing_is_cut_off_and_reported() {
    let (_db, sim, job, mut client) = setup("oversized", json!({"max_response_bytes": 65536}));
    sim.set_faults(json!([{"endpoint": "list", "kind": "oversized", "bytes": 50_000_000}]));
    let result = sync(&mut client, &job.id);
    assert!(result["summary"]["sound"]["errors"][0].as_str().unwrap().starts_with("flex_response_too_large"), "{result}");
}

#[test]
fn an_exhausted_hourly_budget_stops_the_sync_and_reports_rate_limited() {
    let (_db, sim, job, mut client) = setup("budget", json!({}));
    sim.set_config(json!({"hourly_budget": 3}));
    let result = sync(&mut client, &job.id);
    let sound = &result["summary"]["sound"];
    assert!(sound["errors"].to_string().contains("flex_rate_limited"), "{result}");
    // Calls already in flight when the first 429 came back are refused too; nothing starts after.
    let calls = sim.calls();
    assert!(sim.total_calls() <= 3 + 4, "{calls:?}");
    assert_rows_agree_with_flex(&mut client, &sim, &job);
    // The budget is shared by the customer's keys: the next sync does not spend calls on it.
    sim.reset_calls();
    let next = sync(&mut client, &job.id);
    assert!(next["summary"]["sound"]["errors"].to_string().contains("flex_rate_limited"), "{next}");
    assert_eq!(sim.total_calls(), 0);
}

#[test]
fn never_more_calls_than_max_calls_per_sync() {
    let (_db, sim, job, mut client) = setup("max_calls", json!({"max_calls_per_sync": 3}));
    let result = sync(&mut client, &job.id);
    assert_eq!(sim.total_calls(), 3, "{result}");
    assert!(result["summary"]["sound"]["errors"].to_string().contains("flex_call_budget"));
    assert_rows_agree_with_flex(&mut client, &sim, &job);
}

#[test]
fn independent_calls_run_in_parallel_up_to_the_limit() {
    let (_db, sim, mut client) = rig("parallel", json!({"max_parallel_requests": 4}));
    let crew: Vec<(&str, &str)> = (0..12).map(|_| ("sound", "")).collect();
    let job = create_job(&mut client, &["sound"], &crew);
    sim.set_faults(json!([{"endpoint": "add", "kind": "latency", "ms": 200}]));
    let started = Instant::now();
    sync(&mut client, &job.id);
    let elapsed = started.elapsed();
    let peak = sim.state()["peak_in_flight"].as_u64().unwrap();
    assert_eq!(peak, 4, "four adds in flight at once");
    assert!(elapsed < Duration::from_millis(12 * 200), "12 adds of 200 ms did not run one by one: {elapsed:?}");
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn plain_http_and_local_hosts_are_refused_without_the_loopback_switch() {
    let (_db, sim, mut client) = rig("insecure", json!({}));
    let err = client
        .execute(
            "SELECT flex_sync_configure($1, NULL, '{\"allow_insecure_loopback\": false}')",
            &[&sim.server.base_url()],
        )
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22023");
    let err = client
        .execute(
            "SELECT flex_sync_configure('https://localhost/f5/api', NULL, '{\"allow_insecure_loopback\": false}')",
            &[],
        )
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("loopback"), "{err}");
}

/// The check happens where the connection is made: a name (this machine's own, which resolves
/// to a loopback or private address) passes configure, and the sync's resolver refuses the
/// address it resolved to, before connecting; with the loopback switch the same name reaches
/// the simulator, so the name does resolve.
#[test]
fn a_name_resolving_to_this_machine_is_refused_where_the_connection_is_made() {
    use std::net::ToSocketAddrs;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let resolved: Vec<_> = (host.as_str(), 0).to_socket_addrs().expect("this machine's name resolves").collect();
    assert!(
        resolved.iter().all(|a| flex_sync_core::settings::is_refused_address(a.ip())),
        "precondition: this machine's name {host} resolves to non-public addresses: {resolved:?}"
    );
    // The simulator listens where the name points (127.0.0.1, 127.0.1.1, a container's address).
    let sim = Sim::start_on(resolved[0].ip());
    let db = TestDb::create("resolved_local");
    let mut client = db.connect();
    configure(&mut client, &sim, json!({}));
    let job = create_job(&mut client, &["sound"], &FOUR);
    let port = sim.server.addr.port();
    client
        .execute(
            "SELECT flex_sync_configure($1, NULL, '{\"allow_insecure_loopback\": false}')",
            &[&format!("https://{host}:{port}/f5/api")],
        )
        .unwrap();
    sim.reset_calls();
    let refused = sync(&mut client, &job.id);
    assert!(refused["summary"]["sound"]["errors"].to_string().contains("flex_destination_refused"), "{refused}");
    assert_eq!(sim.total_calls(), 0, "nothing reached the simulator");
    client
        .execute(
            "SELECT flex_sync_configure($1, NULL, '{\"allow_insecure_loopback\": true}')",
            &[&format!("http://{host}:{port}/f5/api")],
        )
        .unwrap();
    assert_eq!(sync(&mut client, &job.id)["ok"], true);
    assert!(sim.total_calls() > 0);
}

#[test]
fn the_token_never_leaks_into_errors_logs_or_activity() {
    let (db, sim, job, mut client) = setup("token", json!({}));
    // A wrong token in Flex, then a failing configure, then failing syncs.
    client
        .execute("SELECT flex_sync_configure($1, $2)", &[&sim.server.base_url(), &"wrong-token-should-not-leak"])
        .unwrap();
    let result = sync(&mut client, &job.id);
    assert!(result["summary"]["sound"]["errors"][0].as_str().unwrap().starts_with("flex_unauthorized"), "{result}");
    let err = client
        .execute("SELECT flex_sync_configure($1, $2, '{\"nope\": 1}')", &[&sim.server.base_url(), &"wrong-token-should-not-leak"])
        .unwrap_err();
    assert!(!err.to_string().contains("wrong-token"));
    let mut watcher = db.connect();
    let conninfo = db.conninfo.clone();
    let job_id = job.id.clone();
    // The right token again, so the listing reaches the held fault and the sync stays in flight.
    configure(&mut client, &sim, json!({}));
    sim.set_faults(json!([{"endpoint": "list", "kind": "latency", "ms": 1500}]));
    let running = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        c.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job_id]).unwrap();
    });
    // Read pg_stat_activity while this database's sync waits for its listing (other tests' syncs
    // run in other databases of the same server), however long it took to start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ours, activity) = loop {
        let row = watcher
            .query_one(
                "SELECT string_agg(coalesce(query, ''), ' ') FILTER (WHERE datname = current_database()),
                        string_agg(coalesce(query, ''), ' ')
                 FROM pg_stat_activity",
                &[],
            )
            .unwrap();
        let (ours, all): (String, String) = (row.get(0), row.get(1));
        if ours.contains("flex_sync_job") || Instant::now() > deadline {
            break (ours, all);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    running.join().unwrap();
    assert!(ours.contains("flex_sync_job"), "the sync was running: {ours}");
    for secret in ["wrong-token-should-not-leak", SIM_TOKEN] {
        assert!(!activity.contains(secret));
        let in_log: i64 = client
            .query_one("SELECT count(*) FROM flex_sync_log WHERE (errors::text || summary::text || triggered_by) LIKE '%' || $1 || '%'", &[&secret])
            .unwrap()
            .get(0);
        assert_eq!(in_log, 0);
        let in_view: i64 = client
            .query_one("SELECT count(*) FROM flex_sync_settings WHERE row_to_json(flex_sync_settings)::text LIKE '%' || $1 || '%'", &[&secret])
            .unwrap()
            .get(0);
        assert_eq!(in_view, 0);
        if let Ok(path) = std::env::var("FLEX_SYNC_PG_LOG") {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            assert!(!log.contains(secret), "the server log holds the token");
        }
    }
    // No caller role can read the stored token.
    client.batch_execute("CREATE ROLE plain_caller").unwrap_or(());
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE plain_caller").unwrap();
    let denied = tx.query_one("SELECT api_token FROM flex_sync_private.api_token", &[]).unwrap_err();
    assert_eq!(denied.as_db_error().unwrap().code().code(), "42501");
}

#[test]
fn the_token_comes_from_a_vault_secret_when_none_is_configured() {
    let db = TestDb::create("vault");
    let sim = Sim::start();
    let mut client = db.connect();
    // Supabase Vault is not packaged here: a stand-in with the same view name and columns.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA vault;
             CREATE VIEW vault.decrypted_secrets AS SELECT 'flex_api_token'::text AS name, '{SIM_TOKEN}'::text AS decrypted_secret;"
        ))
        .unwrap();
    client
        .execute(
            "SELECT flex_sync_configure($1, NULL, '{\"allow_insecure_loopback\": true}')",
            &[&sim.server.base_url()],
        )
        .unwrap();
    let masked: Option<String> = client.query_one("SELECT api_token FROM flex_sync_settings", &[]).unwrap().get(0);
    assert_eq!(masked, None, "nothing stored in the settings table");
    let job = create_job(&mut client, &["sound"], &FOUR);
    let result = sync(&mut client, &job.id);
    assert_eq!(result["ok"], true, "{result}");
    assert_converged(&mut client, &sim, &job);
}
