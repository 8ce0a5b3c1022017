//! Supabase RPC, emulated exactly as PostgREST runs a request (PostgREST is not packaged here):
//! `BEGIN; SET LOCAL ROLE …; SELECT set_config('request.jwt.claims', …, true); <call>; COMMIT`.

use std::time::{Duration, Instant};

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::{json, Value};

/// The roles as Supabase creates them. The install grants flex_sync_job to the API roles when
/// they exist; the first test on a fresh server may create them after it, so it grants too.
fn supabase_roles(client: &mut Client) {
    supabase_platform(client);
    client
        .batch_execute("GRANT EXECUTE ON FUNCTION flex_sync_job(uuid, text[], boolean, boolean) TO authenticated, service_role")
        .unwrap();
}

/// One PostgREST request to `flex_sync_job(job)`.
fn rpc(client: &mut Client, role: &str, claims: Value, job: &str, statement_timeout: Option<&str>) -> Result<Value, String> {
    let sql = format!("SELECT flex_sync_job('{job}'::uuid)::text");
    postgrest(client, role, &claims, statement_timeout, &sql).map(|text| serde_json::from_str(&text.unwrap()).unwrap())
}

fn profile(client: &mut Client, role: &str) -> String {
    client
        .query_one("INSERT INTO profiles (first_name, role) VALUES ('User', $1) RETURNING id::text", &[&role])
        .unwrap()
        .get(0)
}

#[test]
fn anon_is_refused_and_only_admin_or_management_may_sync() {
    let (_db, sim, mut client) = rig("rpc_auth", json!({}));
    supabase_roles(&mut client);
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    let technician = profile(&mut client, "technician");
    let manager = profile(&mut client, "management");

    assert_eq!(rpc(&mut client, "anon", json!({"role": "anon"}), &job.id, None).unwrap_err(), "42501");
    let err = rpc(&mut client, "authenticated", json!({"sub": technician, "role": "authenticated"}), &job.id, None);
    assert_eq!(err.unwrap_err(), "42501");
    let err = rpc(&mut client, "authenticated", json!({"role": "authenticated"}), &job.id, None);
    assert_eq!(err.unwrap_err(), "42501", "no subject, no sync");
    assert_eq!(sim.total_calls(), 0, "refused before any Flex call");

    let ok = rpc(&mut client, "authenticated", json!({"sub": manager, "role": "authenticated"}), &job.id, None).unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    let by: String = client
        .query_one("SELECT triggered_by FROM flex_sync_log ORDER BY id DESC LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(by, format!("authenticated sub={manager}"));
    let service = rpc(&mut client, "service_role", json!({"role": "service_role"}), &job.id, None).unwrap();
    assert_eq!(service["ok"], true);
    assert_converged(&mut client, &sim, &job);
}

#[test]
fn under_the_eight_second_rpc_timeout_the_sync_returns_a_partial_result() {
    let (_db, sim, mut client) = rig("rpc_deadline", json!({"sync_deadline_ms": 60000, "request_timeout_ms": 60000, "max_parallel_requests": 1}));
    supabase_roles(&mut client);
    let crew: Vec<(&str, &str)> = (0..12).map(|_| ("sound", "")).collect();
    let job = create_job(&mut client, &["sound"], &crew);
    let manager = profile(&mut client, "admin");
    // Twelve adds of one second each, one at a time: more than the 8 s Supabase allows.
    sim.set_faults(json!([{"endpoint": "add", "kind": "latency", "ms": 1000}]));
    let started = Instant::now();
    let result = rpc(&mut client, "authenticated", json!({"sub": manager}), &job.id, Some("8s")).expect("not killed");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let sound = &result["summary"]["sound"];
    assert_eq!(sound["status"], "partial", "{result}");
    assert!(sound["added"].as_u64().unwrap() >= 5, "{result}");
    assert!(sound["errors"].to_string().contains("flex_deadline"), "{result}");
    sim.clear_faults();
    sync(&mut client, &job.id);
    assert_converged(&mut client, &sim, &job);
}
