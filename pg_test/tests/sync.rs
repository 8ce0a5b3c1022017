//! flex_sync_job against a real server and the simulator, from several connections.

use flex_sync_pg_test::harness::*;
use serde_json::json;

fn setup(test: &str) -> (TestDb, Sim, Job) {
    let (db, sim, mut client) = rig(test, json!({}));
    let job = create_job(&mut client, &["sound", "lights"], &SAMPLE_CREW);
    (db, sim, job)
}

#[test]
fn eight_connections_syncing_one_job_at_once_converge() {
    let (db, sim, job) = setup("eight");
    let results = sync_concurrently(&db.conninfo, &job.id, 8);
    for result in &results {
        assert_eq!(result["ok"], true, "{result}");
    }
    let total_added: u64 = results
        .iter()
        .map(|r| r["summary"]["sound"]["added"].as_u64().unwrap() + r["summary"]["lights"]["added"].as_u64().unwrap())
        .sum();
    assert_eq!(total_added, 12, "exactly one sync adds each technician: {results:?}");
    let mut client = db.connect();
    assert_converged(&mut client, &sim, &job);
    let logs: i64 = client.query_one("SELECT count(*) FROM flex_sync_log", &[]).unwrap().get(0);
    assert_eq!(logs, 16, "one log row per department per call");
}

#[test]
fn a_contact_deleted_by_hand_is_re_added_by_the_next_call() {
    let (db, sim, job) = setup("handdel");
    let mut client = db.connect();
    assert_eq!(sync(&mut client, &job.id)["ok"], true);
    let element = &job.elements["sound"];
    let (line, resource, _) = sim.contacts(element)[0].clone();
    sim.delete_by_hand(&line);
    let result = sync(&mut client, &job.id);
    let sound = &result["summary"]["sound"];
    assert_eq!(sound["stale_removed"], 1, "{result}");
    assert_eq!(sound["added"], 1, "{result}");
    assert!(sim.contacts(element).iter().any(|(_, r, _)| *r == resource));
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_sync_with_nothing_to_change_makes_one_listing_call_per_department_and_writes_only_its_log() {
    let (db, sim, job) = setup("i3");
    let mut client = db.connect();
    sync(&mut client, &job.id);
    sim.reset_calls();
    // Row versions (ctid, xmin) of every table the sync writes: unchanged means not written.
    let versions = |client: &mut postgres::Client| -> (String, String) {
        let rows = client
            .query_one("SELECT string_agg(ctid::text || xmin::text, ',' ORDER BY id) FROM flex_crew_assignments", &[])
            .unwrap()
            .get(0);
        let lines = client
            .query_one(
                "SELECT coalesce(string_agg(ctid::text || xmin::text, ',' ORDER BY flex_line_item_id), '')
                 FROM flex_sync_private.lines",
                &[],
            )
            .unwrap()
            .get(0);
        (rows, lines)
    };
    let before = versions(&mut client);
    let logs_before: i64 = client.query_one("SELECT count(*) FROM flex_sync_log", &[]).unwrap().get(0);
    let result = sync(&mut client, &job.id);
    assert_eq!(result["ok"], true);
    assert_eq!(result["summary"]["sound"]["kept"], 6);
    assert_eq!(sim.calls().get("list").copied(), Some(2), "one listing per department");
    assert_eq!(sim.total_calls(), 2, "{:?}", sim.calls());
    assert_eq!(versions(&mut client), before, "a sync with nothing to change wrote rows");
    let logs_after: i64 = client.query_one("SELECT count(*) FROM flex_sync_log", &[]).unwrap().get(0);
    assert_eq!(logs_after, logs_before + 2);
}

#[test]
fn a_failed_listing_changes_nothing_in_flex_or_the_database() {
    let (db, sim, job) = setup("listfail");
    let mut client = db.connect();
    sync(&mut client, &job.id);
    let rows_before: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    sim.set_faults(json!([{"endpoint": "list", "kind": "status", "status": 500}]));
    sim.reset_calls();
    let result = sync(&mut client, &job.id);
    assert_eq!(result["ok"], false);
    assert_eq!(result["summary"]["sound"]["status"], "failed");
    assert!(result["summary"]["sound"]["errors"][0].as_str().unwrap().starts_with("flex_http_500"));
    let calls = sim.calls();
    assert_eq!(calls.get("add"), None, "no add after a failed listing: {calls:?}");
    assert_eq!(calls.get("delete"), None);
    let rows_after: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    assert_eq!(rows_before, rows_after);
    sim.clear_faults();
    sync(&mut client, &job.id);
    assert_converged(&mut client, &sim, &job);
    assert_eq!(sim.contacts(&job.elements["sound"]).len(), 6, "nobody was added twice");
}

#[test]
fn an_add_whose_answer_is_lost_is_looked_up_not_repeated() {
    let (db, sim, job) = setup("ambiguous");
    let mut client = db.connect();
    sim.set_faults(json!([{"endpoint": "add", "kind": "drop_after_apply", "times": 3}]));
    let result = sync(&mut client, &job.id);
    assert_eq!(result["ok"], true, "{result}");
    // Three adds were applied without an answer: one more listing found them, none was re-sent.
    assert_eq!(sim.calls()["add"], 12, "{:?}", sim.calls());
    assert!(sim.calls()["list"] >= 3, "{:?}", sim.calls());
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn role_changes_reach_existing_contacts_once() {
    let (db, sim, job) = setup("roles");
    let mut client = db.connect();
    sync(&mut client, &job.id);
    let tech = &job.technicians[3]; // SND-PA-T
    client
        .execute("UPDATE job_assignments SET sound_role = 'SND-FOH-R' WHERE technician_id = $1::text::uuid", &[&tech.id])
        .unwrap();
    sim.reset_calls();
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["rolesSet"], 1, "{result}");
    let contact = sim.contacts(&job.elements["sound"]).into_iter().find(|(_, r, _)| *r == tech.resource).unwrap();
    assert_eq!(contact.2.as_deref(), Some("2916b300-c515-11ea-a087-2a0a4490a7fb"));
    sim.reset_calls();
    let again = sync(&mut client, &job.id);
    assert_eq!(again["summary"]["sound"]["rolesSet"], 0);
    assert_eq!(sim.total_calls(), 2);
}

#[test]
fn bad_input_is_rejected_before_any_flex_call_and_writes_nothing() {
    let (db, sim, job) = setup("badinput");
    let mut client = db.connect();
    sim.reset_calls();
    let cases: [(&str, &str); 6] = [
        ("SELECT flex_sync_job(NULL)", "22004"),
        ("SELECT flex_sync_job(gen_random_uuid())", "22023"),
        ("SELECT flex_sync_job($1::text::uuid, '{}')", "22023"),
        ("SELECT flex_sync_job($1::text::uuid, ARRAY['rigging'])", "22023"),
        ("SELECT flex_sync_job($1::text::uuid, ARRAY['sound', NULL])", "22023"),
        ("SELECT flex_sync_job($1::text::uuid, ARRAY[' SOUND ', 'Lights', 'video', 'nope'])", "22023"),
    ];
    for (sql, state) in cases {
        let result = if sql.contains("$1") {
            client.query_one(sql, &[&job.id])
        } else {
            client.query_one(sql, &[])
        };
        let err = result.expect_err(sql);
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(db_err.code().code(), state, "{sql}: {}", db_err.message());
    }
    assert_eq!(sim.total_calls(), 0);
    let logs: i64 = client.query_one("SELECT count(*) FROM flex_sync_log", &[]).unwrap().get(0);
    assert_eq!(logs, 0);
    // Mixed case and repeats are accepted and collapse.
    let ok = client
        .query_one("SELECT flex_sync_job($1::text::uuid, ARRAY[' SOUND ', 'sound'])::text", &[&job.id])
        .unwrap();
    let ok: serde_json::Value = serde_json::from_str(&ok.get::<_, String>(0)).unwrap();
    assert_eq!(ok["summary"].as_object().unwrap().len(), 1);
}

#[test]
fn keep_policy_never_deletes_a_contact_added_by_hand() {
    let (db, sim, job) = setup("keep");
    let mut client = db.connect();
    configure(&mut client, &sim, json!({"orphan_policy": "keep"}));
    sync(&mut client, &job.id);
    let element = &job.elements["sound"];
    let hand = sim.add_by_hand(element, &["someone-else"]);
    client
        .execute("DELETE FROM job_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap();
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["removed"], 1, "the sync's own contact goes: {result}");
    let lines: Vec<String> = sim.contacts(element).into_iter().map(|(l, _, _)| l).collect();
    assert!(lines.contains(&hand[0]), "the hand-made contact stays");
}

#[test]
fn a_rolled_back_sync_is_repaired_by_the_next_one_without_duplicates() {
    let (db, sim, job) = setup("rollback");
    let mut client = db.connect();
    let mut tx = client.transaction().unwrap();
    tx.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job.id]).unwrap();
    tx.rollback().unwrap();
    assert_eq!(sim.contacts(&job.elements["sound"]).len(), 6, "Flex kept the adds");
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["adopted"], 6, "{result}");
    assert_eq!(result["summary"]["sound"]["added"], 0);
    assert_converged(&mut client, &sim, &job);
}

/// Every contact a first sync adds is recorded as the sync's own, with the role it set: all of
/// them, in one statement (the store runs statements with a row limit of one, which stops an
/// INSERT ... RETURNING at its first row).
#[test]
fn every_contact_a_sync_adds_is_recorded_as_its_own_with_its_role() {
    let (db, _sim, job) = setup("recorded");
    let mut client = db.connect();
    let result = sync(&mut client, &job.id);
    let total = |key: &str| -> i64 {
        ["sound", "lights"].iter().map(|d| result["summary"][*d][key].as_i64().unwrap()).sum()
    };
    assert_eq!(total("added"), 12, "{result}");
    assert!(total("rolesSet") >= 2, "{result}");
    let (made, with_role): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE created_by_sync), count(*) FILTER (WHERE created_by_sync AND applied_role IS NOT NULL)
                 FROM flex_sync_private.lines",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((made, with_role), (total("added"), total("rolesSet")), "{result}");
}

/// The statements of a sync with nothing to change stay far below the cost at which PostgreSQL
/// compiles a plan with JIT, on a fresh install whose small tables were never analyzed (a join of
/// two default estimates once cost enough to be compiled on every call, 5 to 30 ms each).
#[test]
fn a_no_change_syncs_statements_cost_too_little_for_jit() {
    let (db, _sim, job) = setup("jitcost");
    let mut client = db.connect();
    assert_eq!(sync(&mut client, &job.id)["ok"], true);
    client
        .batch_execute(
            "SET plan_cache_mode = force_generic_plan;
             CREATE FUNCTION pg_temp.plan_cost(statement text) RETURNS float8 LANGUAGE plpgsql AS $$
             DECLARE plan json;
             BEGIN
                 EXECUTE 'EXPLAIN (FORMAT JSON) ' || statement INTO plan;
                 RETURN (plan -> 0 -> 'Plan' ->> 'Total Cost')::float8;
             END $$;",
        )
        .unwrap();
    let job = &job.id;
    let statements = [
        ("check_call", include_str!("../../sql/queries/check_call.sql"), "boolean", "true".to_string()),
        ("call_context", include_str!("../../sql/queries/call_context.sql"), "text", format!("'{job}'")),
        ("lock_crew_call", include_str!("../../sql/queries/lock_crew_call.sql"), "text, text", format!("'{job}', 'sound'")),
        ("load_crew", include_str!("../../sql/queries/load_crew.sql"), "text, text", format!("'{job}', 'sound'")),
        (
            "write_log",
            include_str!("../../sql/queries/write_log.sql"),
            "text, text, integer, integer, integer, integer, integer, integer, integer, text, jsonb, jsonb, text",
            format!("'{job}', 'sound', 1, 0, 0, 6, 0, 0, 1, 'ok', '[]', '{{}}', 'test'"),
        ),
    ];
    let threshold: f64 = client.query_one("SELECT current_setting('jit_above_cost')::float8", &[]).unwrap().get(0);
    for (name, sql, types, args) in statements {
        client.batch_execute(&format!("PREPARE {name}({types}) AS {sql}")).unwrap();
        let cost: f64 =
            client.query_one("SELECT pg_temp.plan_cost($1)", &[&format!("EXECUTE {name}({args})")]).unwrap().get(0);
        assert!(cost < threshold / 100.0, "{name} costs {cost}, JIT compiles plans above {threshold}");
    }
}

/// A sync lists its crew call's element as soon as it holds the lock, while it reads the crew; the
/// element comes from before the lock. Changed by a transaction that held the lock meanwhile, the
/// element read under the lock is listed and synced, and the early listing's answer is not used.
#[test]
fn a_crew_call_moved_to_another_element_while_the_sync_waited_is_synced_on_the_new_one() {
    let (db, sim, mut job) = setup("moved");
    let mut client = db.connect();
    assert_eq!(sync(&mut client, &job.id)["ok"], true);
    let mut holder = db.connect();
    let mut holding = holder.transaction().unwrap();
    holding
        .execute("SELECT pg_advisory_xact_lock(x'464C5853'::integer, hashtext($1 || '/sound'))", &[&job.id])
        .unwrap();
    let waiter = {
        let (conninfo, job) = (db.conninfo.clone(), job.id.clone());
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
            query_summary(&mut client, &job)
        })
    };
    wait_for("the sync to wait for the crew call's lock", std::time::Duration::from_secs(20), || {
        let waiting: i64 = client
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .unwrap()
            .get(0);
        waiting == 1
    });
    sim.reset_calls();
    let moved: String = holding
        .query_one(
            "UPDATE flex_crew_calls SET flex_element_id = gen_random_uuid()
             WHERE job_id = $1::text::uuid AND department = 'sound' RETURNING flex_element_id::text",
            &[&job.id],
        )
        .unwrap()
        .get(0);
    holding.commit().unwrap();
    let result = waiter.join().unwrap();
    let sound = &result["summary"]["sound"];
    assert_eq!(sound["status"], "ok", "{result}");
    assert_eq!(sound["added"], 6, "every technician added on the new element: {result}");
    assert_eq!(sound["stale_removed"], 6, "the rows of the old element go: {result}");
    // The old element's listing was sent before the crew was read; its answer counted for nothing.
    wait_for("both listings to reach the simulator", std::time::Duration::from_secs(10), || {
        sim.calls().get("list").copied() == Some(2)
    });
    let old = job.elements.insert("sound".into(), moved).unwrap();
    assert_eq!(sim.contacts(&old).len(), 6, "nothing was done on the old element");
    assert_converged(&mut client, &sim, &job);
}

fn query_summary(client: &mut postgres::Client, job: &str) -> serde_json::Value {
    let text: String =
        client.query_one("SELECT flex_sync_job($1::text::uuid, ARRAY['sound'])::text", &[&job]).unwrap().get(0);
    serde_json::from_str(&text).unwrap()
}
