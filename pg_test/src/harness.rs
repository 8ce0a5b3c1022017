//! The out-of-process harness: a fresh database per test on the throwaway server that
//! `pg_test/cluster.sh` starts (its address in `FLEX_SYNC_PG`), an in-process simulator per
//! test, fixtures, and the invariant checks (CONTRIBUTING.md, "What correct means").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};

use postgres::{Client, NoTls};
use serde_json::{json, Value};

use crate::sim::server::{spawn, Simulator};

pub const SIM_TOKEN: &str = "sim-secret-token-7f3a";

/// Connection string of the throwaway server's maintenance database.
pub fn server_conninfo() -> String {
    std::env::var("FLEX_SYNC_PG").unwrap_or_else(|_| {
        panic!("FLEX_SYNC_PG is not set: run the suite through pg_test/test.sh, which starts the server")
    })
}

/// A database of its own for one test, with the extension and the reference schema.
pub struct TestDb {
    pub conninfo: String,
}

impl TestDb {
    pub fn create(test: &str) -> TestDb {
        let db = TestDb::empty(test);
        db.connect()
            .batch_execute("CREATE EXTENSION flex_sync; SELECT flex_sync_install_reference_schema();")
            .unwrap();
        db
    }

    /// A fresh database without the extension.
    pub fn empty(test: &str) -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("t_{}_{}_{}", test, std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let mut admin = Client::connect(&server_conninfo(), NoTls).expect("connect to the test server");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        TestDb { conninfo: format!("{} dbname={name}", server_conninfo()) }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.conninfo, NoTls).expect("connect to the test database")
    }
}

/// The in-process simulator and a client for its control API.
pub struct Sim {
    pub server: Simulator,
    agent: ureq::Agent,
}

impl Sim {
    pub fn start() -> Sim {
        Sim::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// A simulator listening on another local address, for names that resolve to it.
    pub fn start_on(ip: std::net::IpAddr) -> Sim {
        let server = spawn(&std::net::SocketAddr::new(ip, 0).to_string(), SIM_TOKEN).expect("start the simulator");
        Sim { server, agent: ureq::Agent::new_with_defaults() }
    }

    fn control_url(&self, path: &str) -> String {
        format!("http://{}/_sim/{path}", self.server.addr)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut response = self.agent.post(&self.control_url(path)).send_json(&body).expect("control call");
        let text = response.body_mut().read_to_string().unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub fn state(&self) -> Value {
        self.agent.get(&self.control_url("state")).call().unwrap().body_mut().read_json().unwrap()
    }

    pub fn set_config(&self, config: Value) {
        self.post("config", config);
    }

    pub fn set_faults(&self, faults: Value) {
        self.post("faults", faults);
    }

    pub fn clear_faults(&self) {
        self.agent.delete(&self.control_url("faults")).call().unwrap();
    }

    pub fn reset_calls(&self) {
        self.post("calls/reset", json!({}));
    }

    /// Calls per endpoint since the last reset: list, add, role, delete, bulk_delete.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        serde_json::from_value(self.state()["calls"].clone()).unwrap()
    }

    pub fn total_calls(&self) -> u64 {
        self.calls().values().sum()
    }

    /// Contacts added as a person would in the Flex UI; returns their line ids.
    pub fn add_by_hand(&self, element: &str, resources: &[&str]) -> Vec<String> {
        let made = self.post("seed", json!({"elements": {element: resources}}));
        serde_json::from_value(made[element].clone()).unwrap()
    }

    /// Deletes a contact as a person would in the Flex UI; false when it was already gone.
    pub fn delete_by_hand(&self, line: &str) -> bool {
        match self.agent.delete(&self.control_url(&format!("lines/{line}"))).call() {
            Ok(_) => true,
            Err(ureq::Error::StatusCode(404)) => false,
            Err(e) => panic!("control call failed: {e}"),
        }
    }

    /// Sets a contact's business role as a person would in the Flex UI (through Flex's own
    /// row-data endpoint, so it counts as a call).
    pub fn set_role_by_hand(&self, element: &str, line: &str, role: &str) {
        self.agent
            .post(&format!("{}/line-item/{element}/row-data/", self.server.base_url()))
            .header("X-Auth-Token", SIM_TOKEN)
            .send_json(json!({"lineItemId": line, "fieldType": "business-role", "payloadValue": role}))
            .expect("set the role by hand");
    }

    /// (line id, resource id, business role) of every contact of the element.
    pub fn contacts(&self, element: &str) -> Vec<(String, String, Option<String>)> {
        let state = self.state();
        state["elements"][element]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        (
                            l["id"].as_str().unwrap().to_string(),
                            l["resource_id"].as_str().unwrap().to_string(),
                            l["business_role"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Points the database at the simulator. `options` are merged over test-friendly timeouts.
pub fn configure(client: &mut Client, sim: &Sim, options: Value) {
    let mut merged = json!({"allow_insecure_loopback": true, "request_timeout_ms": 2000,
                            "connect_timeout_ms": 1000, "sync_deadline_ms": 20000});
    for (k, v) in options.as_object().unwrap() {
        merged[k] = v.clone();
    }
    client
        .execute(
            "SELECT flex_sync_configure($1, $2, $3::text::jsonb)",
            &[&sim.server.base_url(), &SIM_TOKEN, &merged.to_string()],
        )
        .unwrap();
}

/// A fresh database and simulator for one test, the database configured to the simulator.
pub fn rig(test: &str, options: Value) -> (TestDb, Sim, Client) {
    let db = TestDb::create(test);
    let sim = Sim::start();
    let mut client = db.connect();
    configure(&mut client, &sim, options);
    (db, sim, client)
}

/// `n` connections call `flex_sync_job(job)` at the same moment; their results, in order.
pub fn sync_concurrently(conninfo: &str, job: &str, n: usize) -> Vec<Value> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, conninfo, job) = (barrier.clone(), conninfo.to_string(), job.to_string());
            std::thread::spawn(move || {
                let mut client = Client::connect(&conninfo, NoTls).unwrap();
                barrier.wait();
                sync(&mut client, &job)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A job's crew as the demo and the tests use it: six sound and six lights technicians, with
/// role codes of every tier and one without a role (synced through its profile department).
pub const SAMPLE_CREW: [(&str, &str); 12] = [
    ("sound", "SND-FOH-R"),
    ("sound", "SND-MON-E"),
    ("sound", "SND-RF-E"),
    ("sound", "SND-PA-T"),
    ("sound", "SND-PA-T"),
    ("sound", ""),
    ("lights", "LGT-BRD-R"),
    ("lights", "LGT-SYS-E"),
    ("lights", "LGT-FOLO-E"),
    ("lights", "LGT-PA-T"),
    ("lights", "LGT-PA-T"),
    ("lights", ""),
];

pub struct Technician {
    pub id: String,
    pub resource: String,
}

/// A job with crew calls and technicians, as the application would have written it.
pub struct Job {
    pub id: String,
    /// Department to Flex element id.
    pub elements: BTreeMap<String, String>,
    pub technicians: Vec<Technician>,
}

/// `crew`: (department, role code) per technician; NULL role with a department profile is
/// expressed as `(dept, "")`.
pub fn create_job(client: &mut Client, departments: &[&str], crew: &[(&str, &str)]) -> Job {
    let job: String = client
        .query_one("INSERT INTO jobs (title) VALUES ('Test job') RETURNING id::text", &[])
        .unwrap()
        .get(0);
    let mut elements = BTreeMap::new();
    for dept in departments {
        let element: String = client
            .query_one(
                "INSERT INTO flex_crew_calls (job_id, department, flex_element_id)
                 VALUES ($1::text::uuid, $2, gen_random_uuid()) RETURNING flex_element_id::text",
                &[&job, dept],
            )
            .unwrap()
            .get(0);
        elements.insert(dept.to_string(), element);
    }
    let mut technicians = Vec::new();
    for (i, (dept, role)) in crew.iter().enumerate() {
        let tech = add_technician(client, &job, dept, role, &format!("res-{}-{i}", &job[..8]));
        technicians.push(tech);
    }
    Job { id: job, elements, technicians }
}

pub fn add_technician(client: &mut Client, job: &str, dept: &str, role: &str, resource: &str) -> Technician {
    let id: String = client
        .query_one(
            "INSERT INTO profiles (first_name, department, flex_resource_id) VALUES ('Tech', $1, $2) RETURNING id::text",
            &[&dept, &resource],
        )
        .unwrap()
        .get(0);
    let role = (!role.is_empty()).then_some(role);
    client
        .execute(
            &format!(
                "INSERT INTO job_assignments (job_id, technician_id, {dept}_role, status)
                 VALUES ($1::text::uuid, $2::text::uuid, $3, 'confirmed')"
            ),
            &[&job, &id, &role],
        )
        .unwrap();
    Technician { id, resource: resource.to_string() }
}

pub fn sync(client: &mut Client, job: &str) -> Value {
    query_value(client, "SELECT flex_sync_job($1::text::uuid)::text", job)
}

/// A sync that applies the deletes the guard against mass deletion would hold.
pub fn sync_forced(client: &mut Client, job: &str) -> Value {
    query_value(client, "SELECT flex_sync_job($1::text::uuid, force => true)::text", job)
}

fn query_value(client: &mut Client, sql: &str, job: &str) -> Value {
    let text: String = client.query_one(sql, &[&job]).unwrap().get(0);
    serde_json::from_str(&text).unwrap()
}

/// I1: never two rows for one (crew_call_id, technician_id).
pub fn assert_no_duplicate_rows(client: &mut Client) {
    let dups: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM flex_crew_assignments
              GROUP BY crew_call_id, technician_id HAVING count(*) > 1) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dups, 0, "I1: duplicate flex_crew_assignments rows");
}

/// I2: DB rows = desired set = Flex contacts, one contact per desired resource, and every row
/// points at its technician's contact.
pub fn assert_converged(client: &mut Client, sim: &Sim, job: &Job) {
    assert_no_duplicate_rows(client);
    for (dept, element) in &job.elements {
        let desired: BTreeMap<String, String> = client
            .query("SELECT technician_id::text, flex_resource_id FROM flex_sync_private.desired_crew($1::text::uuid, $2)", &[&job.id, dept])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let rows: BTreeMap<String, String> = client
            .query(
                "SELECT a.technician_id::text, a.flex_line_item_id::text FROM flex_crew_assignments a
                 JOIN flex_crew_calls c ON c.id = a.crew_call_id
                 WHERE c.job_id = $1::text::uuid AND c.department = $2",
                &[&job.id, dept],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let contacts = sim.contacts(element);
        let contact_resources: Vec<&str> = contacts.iter().map(|(_, r, _)| r.as_str()).collect();
        let unique: BTreeSet<&str> = contact_resources.iter().copied().collect();
        assert_eq!(unique.len(), contact_resources.len(), "{dept}: duplicate Flex contacts {contact_resources:?}");
        let desired_resources: BTreeSet<&str> = desired.values().map(String::as_str).collect();
        assert_eq!(unique, desired_resources, "{dept}: Flex contacts differ from the desired set");
        assert_eq!(
            rows.keys().collect::<BTreeSet<_>>(),
            desired.keys().collect::<BTreeSet<_>>(),
            "{dept}: DB rows differ from the desired set"
        );
        for (tech, line) in &rows {
            let resource = &desired[tech];
            assert!(
                contacts.iter().any(|(l, r, _)| l == line && r == resource),
                "{dept}: row of tech {tech} points at {line}, not at the contact of {resource}"
            );
        }
    }
}

/// What a Supabase database has before an application's migrations run: the API roles
/// (cluster-wide, created once), the `auth` schema with `users` and `uid()`, pgcrypto in
/// `extensions`.
pub fn supabase_platform(client: &mut Client) {
    for role in ["anon", "authenticated", "service_role"] {
        // Roles are cluster-wide and tests run in parallel: another test may create it first.
        client
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            ))
            .unwrap();
    }
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS auth;
             CREATE TABLE IF NOT EXISTS auth.users (id uuid PRIMARY KEY);
             CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
                 $$ SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid $$;
             GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
             CREATE SCHEMA IF NOT EXISTS extensions;
             CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA extensions;
             GRANT USAGE ON SCHEMA public, extensions TO anon, authenticated, service_role;",
        )
        .unwrap();
}

/// The default privileges a database may have when `CREATE EXTENSION flex_sync` runs.
#[derive(Debug, Clone, Copy)]
pub enum DefaultPrivileges {
    /// PostgreSQL's own: nothing granted to anyone by name.
    None,
    /// Supabase's platform defaults (its init scripts): ALL on new functions, tables and
    /// sequences in `public` to the API roles; here also outside `public`, and USAGE on new
    /// schemas, so the extension's private schema meets them too.
    SupabasePlatform,
    /// The live app's migrations, as `pg_test/fixtures/area-tecnica-schema-subset.sql` has them,
    /// with its tables (enum statuses, RLS, its constraint names).
    LiveApp,
}

pub const LIVE_APP_SCHEMA: &str = include_str!("../fixtures/area-tecnica-schema-subset.sql");

impl DefaultPrivileges {
    pub fn apply(self, client: &mut Client) {
        match self {
            DefaultPrivileges::None => {}
            DefaultPrivileges::SupabasePlatform => client
                .batch_execute(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
                     ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
                     ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
                     ALTER DEFAULT PRIVILEGES GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
                     ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated, service_role;
                     ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
                     ALTER DEFAULT PRIVILEGES GRANT ALL ON SCHEMAS TO anon, authenticated, service_role;",
                )
                .unwrap(),
            DefaultPrivileges::LiveApp => client.batch_execute(LIVE_APP_SCHEMA).unwrap(),
        }
    }
}

/// One PostgREST request as PostgREST runs it: `BEGIN; SET LOCAL ROLE …; set_config(
/// 'request.jwt.claims', …, true); <statement>; COMMIT`. Returns the first column of the first
/// row as text, or the database error's SQLSTATE.
pub fn postgrest(client: &mut Client, role: &str, claims: &Value, statement_timeout: Option<&str>, sql: &str) -> Result<Option<String>, String> {
    let mut tx = client.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL ROLE {role}")).unwrap();
    if let Some(timeout) = statement_timeout {
        tx.batch_execute(&format!("SET LOCAL statement_timeout = '{timeout}'")).unwrap();
    }
    tx.execute("SELECT set_config('request.jwt.claims', $1, true)", &[&claims.to_string()]).unwrap();
    match tx.query(sql, &[]) {
        Ok(rows) => {
            let first = rows.first().and_then(|r| r.try_get::<_, Option<String>>(0).ok().flatten());
            tx.commit().unwrap();
            Ok(first)
        }
        Err(e) => Err(e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| e.to_string())),
    }
}

/// What the server's `pg_config` says (`--bindir`, `--sharedir`, ...): the one the test command
/// installed into, `FLEX_SYNC_PG_CONFIG`, else PostgreSQL 15's.
pub fn pg_config(what: &str) -> std::path::PathBuf {
    let pg_config = std::env::var("FLEX_SYNC_PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = std::process::Command::new(&pg_config).arg(what).output().expect("run pg_config");
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `limit`. For waiting on
/// something another connection does (a commit, a Flex call), never on time alone.
pub fn wait_for(what: &str, limit: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "gave up waiting for {what} after {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `CALL flex_sync_run_queue(args)`: the run's report.
pub fn run_queue(client: &mut Client, args: &str) -> Value {
    call_for_report(client, &format!("CALL flex_sync_run_queue({args})"))
}

/// A `CALL` of a procedure whose last argument is `INOUT report jsonb`: that report.
pub fn call_for_report(client: &mut Client, call: &str) -> Value {
    let messages = client.simple_query(call).unwrap();
    let report = messages
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .expect("CALL returns the report");
    serde_json::from_str(&report).unwrap()
}

/// The first column of every row `sql` returns, as text.
pub fn strings(client: &mut Client, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Vec<String> {
    client.query(sql, params).unwrap().iter().map(|r| r.get(0)).collect()
}
