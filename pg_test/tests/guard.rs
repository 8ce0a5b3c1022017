//! The preview, the guard against mass deletion and the drift check, against a real server and
//! the simulator: a plan changes nothing and says what the next sync does; an emptied crew is
//! held until forced; the queue leaves a held item alone; drift finds hand edits within budget.

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::{json, Value};

fn crew(n: usize) -> Vec<(&'static str, &'static str)> {
    vec![("sound", "SND-PA-T"); n]
}

fn plan(client: &mut Client, job: &str) -> Value {
    let text: String = client.query_one("SELECT flex_sync_plan($1::text::uuid)::text", &[&job]).unwrap().get(0);
    serde_json::from_str(&text).unwrap()
}

/// Rows of the crew call and log rows: what a plan must leave as it found them.
fn written(client: &mut Client) -> (i64, i64, Vec<String>) {
    let rows: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    let log: i64 = client.query_one("SELECT count(*) FROM flex_sync_log", &[]).unwrap().get(0);
    let lines = strings(client, "SELECT flex_line_item_id::text || coalesce(applied_role, '') FROM flex_sync_private.lines ORDER BY 1", &[]);
    (rows, log, lines)
}

fn unassign_all(client: &mut Client, job: &Job) {
    client.execute("DELETE FROM job_assignments WHERE job_id = $1::text::uuid", &[&job.id]).unwrap();
}

#[test]
fn a_plan_writes_nothing_lists_once_and_matches_the_next_sync() {
    let (_db, sim, mut client) = rig("plan_matches", json!({}));
    let job = create_job(&mut client, &["sound"], &crew(4));
    sync(&mut client, &job.id);
    // One leaves, one comes, one contact is added by hand, one role is changed by hand.
    client
        .execute("DELETE FROM job_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap();
    add_technician(&mut client, &job.id, "sound", "SND-FOH-R", "res-newcomer");
    let element = &job.elements["sound"];
    sim.add_by_hand(element, &["stranger"]);
    let before = written(&mut client);
    sim.reset_calls();
    let planned = plan(&mut client, &job.id);
    assert_eq!(sim.calls(), [("list".to_string(), 1)].into_iter().collect(), "only the listing: {planned}");
    assert_eq!(written(&mut client), before, "a plan writes no row, no line record, no log row");
    assert_eq!(sim.contacts(element).len(), 5, "and changes nothing in Flex");
    let sound = &planned["plan"]["sound"];
    assert_eq!(sound["status"], "ok", "{planned}");
    assert_eq!(sound["adds"].as_array().unwrap().len(), 1);
    assert_eq!(sound["adds"][0]["resource_id"], "res-newcomer");
    let reasons: Vec<&str> = sound["deletes"].as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, vec!["not_desired", "orphan"]);
    // The sync does what was planned.
    let done = sync(&mut client, &job.id);
    let summary = &done["summary"]["sound"];
    assert_eq!((summary["added"].as_u64(), summary["removed"].as_u64()), (Some(1), Some(2)), "{done}");
    assert_eq!(summary["kept"], sound["kept"]);
    let now = job_with_crew(&mut client, &job);
    assert_converged(&mut client, &sim, &now);
}

/// The job as the database now has it (technicians assigned since it was made included).
fn job_with_crew(client: &mut Client, job: &Job) -> Job {
    let technicians = client
        .query(
            "SELECT p.id::text, p.flex_resource_id FROM job_assignments ja JOIN profiles p ON p.id = ja.technician_id
             WHERE ja.job_id = $1::text::uuid",
            &[&job.id],
        )
        .unwrap()
        .iter()
        .map(|r| Technician { id: r.get(0), resource: r.get(1) })
        .collect();
    Job { id: job.id.clone(), elements: job.elements.clone(), technicians }
}

#[test]
fn an_emptied_crew_of_six_is_held_until_forced() {
    let (_db, sim, mut client) = rig("held_six", json!({}));
    let job = create_job(&mut client, &["sound"], &crew(6));
    sync(&mut client, &job.id);
    let element = &job.elements["sound"];
    unassign_all(&mut client, &job);
    sim.reset_calls();
    let held = sync(&mut client, &job.id);
    let sound = &held["summary"]["sound"];
    assert_eq!((held["ok"].as_bool(), sound["status"].as_str()), (Some(false), Some("held")), "{held}");
    assert_eq!(sound["held"]["reason"], "empty_desired_set");
    assert_eq!(sound["held"]["deletes"].as_array().unwrap().len(), 6);
    assert_eq!(sound["removed"], 0);
    assert_eq!(sim.contacts(element).len(), 6, "no contact deleted");
    assert_eq!(sim.calls().get("delete").copied().unwrap_or(0) + sim.calls().get("bulk_delete").copied().unwrap_or(0), 0);
    let rows: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    assert_eq!(rows, 6, "the rows stay with their contacts");
    let status: String = client.query_one("SELECT status FROM flex_sync_log ORDER BY id DESC LIMIT 1", &[]).unwrap().get(0);
    assert_eq!(status, "held");
    let forced = sync_forced(&mut client, &job.id);
    assert_eq!(forced["summary"]["sound"]["status"], "ok", "{forced}");
    assert_eq!(forced["summary"]["sound"]["removed"], 6);
    assert!(sim.contacts(element).is_empty());
    let job = Job { technicians: Vec::new(), ..job };
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn one_of_eight_is_not_mass_deletion_but_five_of_eight_is() {
    let (_db, sim, mut client) = rig("held_fraction", json!({}));
    let job = create_job(&mut client, &["sound"], &crew(8));
    sync(&mut client, &job.id);
    let leave = |client: &mut Client, technicians: &[Technician]| {
        for t in technicians {
            client.execute("DELETE FROM job_assignments WHERE technician_id = $1::text::uuid", &[&t.id]).unwrap();
        }
    };
    leave(&mut client, &job.technicians[..1]);
    let one = sync(&mut client, &job.id);
    assert_eq!((one["summary"]["sound"]["status"].as_str(), one["summary"]["sound"]["removed"].as_u64()), (Some("ok"), Some(1)), "{one}");
    leave(&mut client, &job.technicians[1..5]);
    let four_of_seven = sync(&mut client, &job.id);
    assert_eq!(four_of_seven["summary"]["sound"]["status"], "held", "{four_of_seven}");
    assert_eq!(four_of_seven["summary"]["sound"]["held"]["reason"], "max_delete_fraction");
    assert_eq!(sim.contacts(&job.elements["sound"]).len(), 7);
    // A DBA who wants no guard says so.
    configure(&mut client, &sim, json!({"max_delete_fraction": 1}));
    let unguarded = sync(&mut client, &job.id);
    assert_eq!((unguarded["summary"]["sound"]["status"].as_str(), unguarded["summary"]["sound"]["removed"].as_u64()), (Some("ok"), Some(4)));
}

#[test]
fn the_queue_leaves_a_held_item_held_until_its_crew_changes() {
    let (_db, sim, mut client) = rig("held_queue", json!({}));
    let job = create_job(&mut client, &["sound"], &crew(3));
    client.batch_execute("SELECT flex_sync_enable_queue()").unwrap();
    sync(&mut client, &job.id);
    unassign_all(&mut client, &job);
    let first = run_queue(&mut client, "");
    assert_eq!((first["held"].as_u64(), first["failed"].as_u64()), (Some(1), Some(0)), "{first}");
    let held = strings(&mut client, "SELECT department || ' ' || held_reason FROM flex_sync_held_items", &[]);
    assert_eq!(held.len(), 1);
    assert!(held[0].starts_with("sound empty_desired_set: "), "{held:?}");
    // Not retried: a run makes no Flex call for it, however many runs there are.
    sim.reset_calls();
    for _ in 0..3 {
        let again = run_queue(&mut client, "");
        assert_eq!((again["synced"].as_u64(), again["held"].as_u64(), again["remaining"].as_u64()), (Some(0), Some(0), Some(0)), "{again}");
    }
    assert_eq!(sim.total_calls(), 0);
    let health: i64 = client.query_one("SELECT held_items FROM flex_sync_health", &[]).unwrap().get(0);
    assert_eq!(health, 1);
    // Its crew changes: the hold ends and the queue syncs the item again.
    add_technician(&mut client, &job.id, "sound", "SND-PA-T", "res-back");
    let changed = run_queue(&mut client, "");
    assert_eq!(changed["held"], 1, "still three of four to go: held again, with the newcomer added: {changed}");
    assert_eq!(sim.calls()["add"], 1);
    // Forced from the frontend: applied, and the hold is over.
    let forced = sync_forced(&mut client, &job.id);
    assert_eq!(forced["summary"]["sound"]["removed"], 3, "{forced}");
    let left: i64 = client.query_one("SELECT count(*) FROM flex_sync_held_items", &[]).unwrap().get(0);
    assert_eq!(left, 0);
}

#[test]
fn drift_finds_hand_edits_and_keeps_to_its_budget() {
    let (_db, sim, mut client) = rig("drift", json!({}));
    let jobs: Vec<Job> = (0..5).map(|_| create_job(&mut client, &["sound"], &crew(2))).collect();
    for job in &jobs {
        sync(&mut client, &job.id);
    }
    let clean = client.query_one("SELECT flex_sync_drift()::text", &[]).unwrap().get::<_, String>(0);
    let clean: Value = serde_json::from_str(&clean).unwrap();
    assert_eq!((clean["checked"].as_u64(), clean["drifted"].as_array().map(Vec::len)), (Some(5), Some(0)), "{clean}");
    // By hand in Flex: a contact deleted, a contact added, a role changed.
    let deleted = sim.contacts(&jobs[0].elements["sound"])[0].0.clone();
    assert!(sim.delete_by_hand(&deleted));
    sim.add_by_hand(&jobs[1].elements["sound"], &["stranger"]);
    let line = sim.contacts(&jobs[2].elements["sound"])[0].0.clone();
    sim.set_role_by_hand(&jobs[2].elements["sound"], &line, "some-other-role");
    // A budget of 3: three listings, the least recently checked first, then the other two.
    sim.reset_calls();
    let first = drift(&mut client, 3);
    assert_eq!((first["checked"].as_u64(), first["flex_calls"].as_u64()), (Some(3), Some(3)), "{first}");
    assert_eq!(sim.total_calls(), 3);
    let second = drift(&mut client, 3);
    assert_eq!(sim.total_calls(), 6);
    let drifted: Vec<Value> = first["drifted"].as_array().unwrap().iter().chain(second["drifted"].as_array().unwrap()).cloned().collect();
    let by_job = |job: &Job| drifted.iter().find(|d| d["job_id"] == job.id.as_str()).map(|d| d["drift"].clone());
    assert_eq!(by_job(&jobs[0]).unwrap()["missing"].as_array().unwrap().len(), 1, "{drifted:?}");
    assert_eq!(by_job(&jobs[0]).unwrap()["rows"].as_array().unwrap().len(), 1, "a row points at the deleted contact");
    assert_eq!(by_job(&jobs[1]).unwrap()["extra"][0]["resource_id"], "stranger");
    assert_eq!(by_job(&jobs[2]).unwrap()["wrong_role"][0]["line_id"], line.as_str());
    assert!(by_job(&jobs[3]).is_none() && by_job(&jobs[4]).is_none());
    let view = strings(
        &mut client,
        "SELECT job_id::text || ' ' || in_sync || ' ' || missing || extra || wrong_role FROM flex_sync_drift_status ORDER BY checked_at, job_id",
        &[],
    );
    assert_eq!(view.len(), 5);
    assert!(view.contains(&format!("{} false 100", jobs[0].id)), "{view:?}");
    assert!(view.contains(&format!("{} false 010", jobs[1].id)), "{view:?}");
    assert!(view.contains(&format!("{} false 001", jobs[2].id)), "{view:?}");
    // A job that has ended is not checked; a check whose call budget ends early records only
    // what it listed.
    client.batch_execute("ALTER TABLE jobs ADD COLUMN end_time timestamptz").unwrap();
    client.execute("UPDATE jobs SET end_time = now() - interval '1 day' WHERE id = $1::text::uuid", &[&jobs[4].id]).unwrap();
    configure(&mut client, &sim, json!({"max_calls_per_sync": 2}));
    let before = strings(&mut client, "SELECT crew_call_id::text || checked_at::text FROM flex_sync_drift_status ORDER BY 1", &[]);
    let short = drift(&mut client, 5);
    assert_eq!((short["checked"].as_u64(), short["unchecked"].as_u64(), short["flex_calls"].as_u64()), (Some(2), Some(2), Some(2)), "{short}");
    let after = strings(&mut client, "SELECT crew_call_id::text || checked_at::text FROM flex_sync_drift_status ORDER BY 1", &[]);
    assert_eq!(before.iter().filter(|b| !after.contains(b)).count(), 2, "only the two listed have a new record");
    let ended_checked: String = client
        .query_one("SELECT checked_at::text FROM flex_sync_drift_status WHERE job_id = $1::text::uuid", &[&jobs[4].id])
        .unwrap()
        .get(0);
    assert!(before.iter().any(|b| b.ends_with(&ended_checked)), "the ended job's record is the one from before");
    // The drift check wrote its records and nothing else.
    let last_status = strings(&mut client, "SELECT DISTINCT status FROM flex_sync_log", &[]);
    assert_eq!(last_status, vec!["ok".to_string()], "no log rows from the drift check");
}

fn drift(client: &mut Client, budget: i32) -> Value {
    let text: String = client.query_one("SELECT flex_sync_drift($1)::text", &[&budget]).unwrap().get(0);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_frontend_manager_may_preview_and_anon_may_not() {
    let (_db, _sim, mut client) = rig("plan_rpc", json!({}));
    supabase_platform(&mut client);
    client.batch_execute("SELECT flex_sync_private.restrict_acls()").unwrap();
    let job = create_job(&mut client, &["sound"], &crew(1));
    let manager: String = client
        .query_one("INSERT INTO profiles (first_name, role) VALUES ('M', 'management') RETURNING id::text", &[])
        .unwrap()
        .get(0);
    let sql = format!("SELECT flex_sync_plan('{}'::uuid)::text", job.id);
    let planned = postgrest(&mut client, "authenticated", &json!({"sub": manager}), None, &sql).unwrap().unwrap();
    assert!(planned.contains("\"status\": \"ok\""), "{planned}");
    let refused = postgrest(&mut client, "anon", &json!({}), None, &sql).unwrap_err();
    assert!(refused.contains("42501"), "{refused}");
    let drift = postgrest(&mut client, "authenticated", &json!({"sub": manager}), None, "SELECT flex_sync_drift()::text").unwrap_err();
    assert!(drift.contains("42501"), "only the owner runs the drift check: {drift}");
}
