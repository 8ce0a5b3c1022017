//! One test per hazard of the Edge Function (its replica: src/edge_function.rs), each against a real
//! server and the simulator. The hazards of concurrency and failed listings are in sync.rs.

use flex_sync_pg_test::harness::*;
use serde_json::json;

fn setup(test: &str, crew: &[(&str, &str)]) -> (TestDb, Sim, Job, postgres::Client) {
    let (db, sim, mut client) = rig(test, json!({}));
    let job = create_job(&mut client, &["sound"], crew);
    (db, sim, job, client)
}

const FOUR: [(&str, &str); 4] = [("sound", "SND-FOH-R"), ("sound", "SND-RF-E"), ("sound", "SND-PA-T"), ("sound", "")];

#[test]
fn declined_technicians_are_not_on_the_crew() {
    let (_db, sim, job, mut client) = setup("declined", &FOUR);
    client
        .execute("UPDATE job_assignments SET status = 'declined' WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap();
    sync(&mut client, &job.id);
    let resources: Vec<String> = sim.contacts(&job.elements["sound"]).into_iter().map(|c| c.1).collect();
    assert_eq!(resources.len(), 3);
    assert!(!resources.contains(&job.technicians[0].resource));
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn adds_and_removals_do_not_fight_and_converge_in_one_run() {
    let (_db, sim, job, mut client) = setup("fight", &FOUR);
    let element = &job.elements["sound"];
    sim.add_by_hand(element, &["stranger-1", "stranger-2"]);
    let result = sync(&mut client, &job.id);
    let sound = &result["summary"]["sound"];
    assert_eq!((sound["added"].as_u64(), sound["orphans_removed"].as_u64()), (Some(4), Some(2)), "{result}");
    assert_converged(&mut client, &sim, &job);
    sim.reset_calls();
    sync(&mut client, &job.id);
    assert_eq!(sim.total_calls(), 1, "converged after one run: {:?}", sim.calls());
}

#[test]
fn an_add_answered_without_a_line_id_is_not_sent_twice() {
    // The Edge Function re-sent the add as a form body when the first answer had no id.
    let (_db, sim, job, mut client) = setup("noid", &FOUR);
    sim.set_config(json!({"add_response": "empty"}));
    let result = sync(&mut client, &job.id);
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(sim.calls()["add"], 4);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_contact_in_flex_unknown_to_the_database_is_adopted_not_added_again() {
    let (_db, sim, job, mut client) = setup("adopt", &FOUR);
    let element = &job.elements["sound"];
    let hand = sim.add_by_hand(element, &[job.technicians[1].resource.as_str()]);
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["adopted"], 1, "{result}");
    assert_eq!(sim.calls()["add"], 3);
    let line: String = client
        .query_one("SELECT flex_line_item_id::text FROM flex_crew_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[1].id])
        .unwrap()
        .get(0);
    assert_eq!(line, hand[0]);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn duplicate_contacts_of_one_resource_collapse_to_the_one_the_row_references() {
    let (_db, sim, job, mut client) = setup("collapse", &FOUR);
    sync(&mut client, &job.id);
    let element = &job.elements["sound"];
    let tech = &job.technicians[2];
    let referenced: String = client
        .query_one("SELECT flex_line_item_id::text FROM flex_crew_assignments WHERE technician_id = $1::text::uuid", &[&tech.id])
        .unwrap()
        .get(0);
    sim.add_by_hand(element, &[tech.resource.as_str(), tech.resource.as_str()]);
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["duplicates_removed"], 2, "{result}");
    assert!(sim.contacts(element).iter().any(|(l, _, _)| *l == referenced), "the referenced contact stays");
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn every_listing_shape_is_read_and_containers_are_never_deleted() {
    for (shape, grouped) in [("flat", true), ("nested", false), ("nested", true), ("untyped", false), ("untyped", true)] {
        let (_db, sim, job, mut client) = setup(&format!("shape_{shape}_{grouped}"), &FOUR);
        sim.set_config(json!({"row_shape": shape, "group_rows": grouped}));
        sync(&mut client, &job.id);
        sim.reset_calls();
        let again = sync(&mut client, &job.id);
        assert_eq!(again["summary"]["sound"]["kept"], 4, "{shape}/{grouped}: {again}");
        assert_eq!(sim.total_calls(), 1, "{shape}/{grouped}: {:?}", sim.calls());
        // With nobody desired, only the contacts go, never the group container.
        client.batch_execute("DELETE FROM job_assignments").unwrap();
        let emptied = sync_forced(&mut client, &job.id);
        assert_eq!(emptied["summary"]["sound"]["removed"], 4, "{shape}/{grouped}: {emptied}");
        assert_eq!(emptied["ok"], true, "{shape}/{grouped}: {emptied}");
        assert!(sim.contacts(&job.elements["sound"]).is_empty());
    }
}

#[test]
fn bulk_delete_falls_back_to_single_deletes_when_refused() {
    let (_db, sim, job, mut client) = setup("bulk", &FOUR);
    sync(&mut client, &job.id);
    client.batch_execute("DELETE FROM job_assignments").unwrap();
    sim.set_config(json!({"bulk_delete_key": "ids"}));
    sim.reset_calls();
    let result = sync_forced(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["removed"], 4, "{result}");
    assert_eq!(sim.calls()["bulk_delete"], 1);
    assert_eq!(sim.calls()["delete"], 4);
    let rows: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    assert_eq!(rows, 0);
}

#[test]
fn a_transient_listing_error_is_retried_and_a_failed_delete_keeps_its_row() {
    let (_db, sim, job, mut client) = setup("retry", &FOUR);
    sim.set_faults(json!([{"endpoint": "list", "kind": "status", "status": 503, "times": 1}]));
    let result = sync(&mut client, &job.id);
    assert_eq!(result["ok"], true, "the 503 was retried: {result}");
    assert_eq!(sim.calls()["list"], 2);
    client
        .execute("DELETE FROM job_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap();
    sim.set_faults(json!([{"endpoint": "delete", "kind": "status", "status": 403}]));
    let failed = sync(&mut client, &job.id);
    assert_eq!(failed["ok"], false);
    assert!(failed["summary"]["sound"]["errors"][0].as_str().unwrap().starts_with("flex_unauthorized"), "{failed}");
    let kept: i64 = client
        .query_one("SELECT count(*) FROM flex_crew_assignments WHERE technician_id = $1::text::uuid", &[&job.technicians[0].id])
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the row stays while its contact is still in Flex");
    sim.clear_faults();
    sync(&mut client, &job.id);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn the_rf_especialista_gets_the_especialista_role() {
    let (_db, sim, job, mut client) = setup("rf", &FOUR);
    sync(&mut client, &job.id);
    let rf = &job.technicians[1];
    let role = sim.contacts(&job.elements["sound"]).into_iter().find(|c| c.1 == rf.resource).unwrap().2;
    assert_eq!(role.as_deref(), Some("b18a5bcc-59fa-4956-917f-0d1816d7d9b3"));
}

#[test]
fn unmapped_role_tiers_are_diagnostics_not_failures() {
    let (_db, _sim, mut client) = rig("lights_roles", json!({}));
    let job = create_job(&mut client, &["lights"], &[("lights", "LGT-BRD-R"), ("lights", "LGT-PA-T")]);
    let result = sync(&mut client, &job.id);
    let lights = &result["summary"]["lights"];
    assert_eq!(result["ok"], true);
    assert_eq!(lights["added"], 2);
    assert_eq!(lights["business_role_diagnostics"].as_array().unwrap().len(), 2, "{result}");
}

#[test]
fn a_busy_crew_call_is_skipped_when_asked_not_to_wait() {
    let (db, sim, job, mut client) = setup("skip", &FOUR);
    let mut holder = db.connect();
    let mut tx = holder.transaction().unwrap();
    tx.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job.id]).unwrap();
    let text: String = client
        .query_one("SELECT flex_sync_job($1::text::uuid, NULL, false)::text", &[&job.id])
        .unwrap()
        .get(0);
    let result: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["summary"]["sound"]["status"], "skipped", "{result}");
    tx.commit().unwrap();
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn opposite_department_orders_never_deadlock() {
    let (db, sim, mut client) = rig("order", json!({}));
    let job = create_job(&mut client, &["sound", "lights"], &[("sound", "SND-PA-T"), ("lights", "LGT-PA-T")]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (barrier, conninfo, job_id) = (barrier.clone(), db.conninfo.clone(), job.id.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
                let order = if i % 2 == 0 { "ARRAY['sound', 'lights']" } else { "ARRAY['LIGHTS', 'sound']" };
                barrier.wait();
                c.query_one(&format!("SELECT flex_sync_job($1::text::uuid, {order})::text"), &[&job_id]).map(|_| ())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().expect("no deadlock error");
    }
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_backend_terminated_mid_sync_leaves_nothing_the_next_sync_cannot_repair() {
    let (db, sim, job, mut client) = setup("terminate", &FOUR);
    sim.set_faults(json!([{"endpoint": "role", "kind": "latency", "ms": 3000}]));
    let conninfo = db.conninfo.clone();
    let job_id = job.id.clone();
    let victim = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).unwrap();
        c.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job_id]).map(|_| ())
    });
    // Wait until the adds are in Flex and the sync waits on the slow role calls.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.contacts(&job.elements["sound"]).len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed: bool = client
        .query_one(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'SELECT flex_sync_job%'",
            &[],
        )
        .unwrap()
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    assert!(killed, "the sync was running");
    assert!(victim.join().unwrap().is_err(), "the killed call fails");
    let rows: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    assert_eq!(rows, 0, "nothing was committed");
    sim.clear_faults();
    let result = sync(&mut client, &job.id);
    assert_eq!(result["summary"]["sound"]["adopted"], 4, "{result}");
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn a_replaced_desired_set_rule_is_used() {
    let (_db, sim, job, mut client) = setup("confirmed_only", &FOUR);
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION flex_sync_private.desired_crew(p_job_id uuid, p_department text)
             RETURNS TABLE (technician_id uuid, flex_resource_id text, role_code text)
             LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
                 SELECT ja.technician_id, btrim(p.flex_resource_id), ja.sound_role
                 FROM public.job_assignments ja JOIN public.profiles p ON p.id = ja.technician_id
                 WHERE ja.job_id = p_job_id AND ja.status = 'confirmed' AND p_department = 'sound'
             $$",
        )
        .unwrap();
    client
        .execute("UPDATE job_assignments SET status = 'invited' WHERE technician_id = $1::text::uuid", &[&job.technicians[3].id])
        .unwrap();
    sync(&mut client, &job.id);
    assert_eq!(sim.contacts(&job.elements["sound"]).len(), 3);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn any_name_of_the_unique_constraint_works() {
    let (_db, sim, job, mut client) = setup("constraint_name", &FOUR);
    client
        .batch_execute(
            "ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key;
             CREATE UNIQUE INDEX my_own_name ON flex_crew_assignments (technician_id, crew_call_id);",
        )
        .unwrap();
    sync(&mut client, &job.id);
    assert_converged(&mut client, &sim, &job);
}
