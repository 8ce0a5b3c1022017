//! The extension in the databases it really lands in: under no default privileges, Supabase's
//! platform defaults and the live app's defaults, every function and relation of the extension
//! ends with exactly the ACL the README lists, and the API roles really fail at every dangerous
//! call. The token never reaches a dump. SECURITY DEFINER functions are listed with their ACLs.

use std::process::Command;

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::json;

const REGIMES: [DefaultPrivileges; 3] =
    [DefaultPrivileges::None, DefaultPrivileges::SupabasePlatform, DefaultPrivileges::LiveApp];

/// A database as a new user would have it: Supabase's platform, the regime's default
/// privileges, then `CREATE EXTENSION flex_sync`. The live app brings its own tables; the
/// others get the reference schema.
fn installed_under(test: &str, regime: DefaultPrivileges) -> (TestDb, Client) {
    let db = TestDb::empty(test);
    let mut client = db.connect();
    supabase_platform(&mut client);
    regime.apply(&mut client);
    client.batch_execute("CREATE EXTENSION flex_sync").unwrap();
    if !matches!(regime, DefaultPrivileges::LiveApp) {
        client.batch_execute("SELECT flex_sync_install_reference_schema()").unwrap();
    }
    (db, client)
}

/// Every (object, role, privilege) that PUBLIC or an API role holds on a member of the
/// extension, by the server's own privilege checks (memberships included).
fn reachable(client: &mut Client) -> Vec<String> {
    client
        .query(
            "WITH members AS (
                 SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                 WHERE e.extname = 'flex_sync' AND d.deptype = 'e'),
             roles(role) AS (VALUES ('public'), ('anon'), ('authenticated'), ('service_role'))
             SELECT format('%s %s %s', p.oid::regprocedure, r.role, 'EXECUTE')
             FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid, roles r
             WHERE has_function_privilege(r.role, p.oid, 'EXECUTE')
             UNION ALL
             SELECT format('%s %s %s', c.oid::regclass, r.role, v.privilege)
             FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid, roles r,
                  (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE')) v(privilege)
             WHERE c.relkind <> 'S' AND has_table_privilege(r.role, c.oid, v.privilege)
             UNION ALL
             SELECT format('%s %s %s', c.oid::regclass, r.role, v.privilege)
             FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid, roles r,
                  (VALUES ('USAGE'), ('SELECT'), ('UPDATE')) v(privilege)
             WHERE c.relkind = 'S' AND has_sequence_privilege(r.role, c.oid, v.privilege)
             UNION ALL
             SELECT format('schema %s %s %s', n.nspname, r.role, v.privilege)
             FROM members m JOIN pg_namespace n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid, roles r,
                  (VALUES ('USAGE'), ('CREATE')) v(privilege)
             WHERE has_schema_privilege(r.role, n.oid, v.privilege)
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The README's table "Who may call what": the API roles may call flex_sync_job and
/// flex_sync_plan, nothing else is reachable by anyone but the owner.
fn readme_list() -> Vec<String> {
    vec![
        "flex_sync_job(uuid,text[],boolean,boolean) authenticated EXECUTE".to_string(),
        "flex_sync_job(uuid,text[],boolean,boolean) service_role EXECUTE".to_string(),
        "flex_sync_plan(uuid,text[]) authenticated EXECUTE".to_string(),
        "flex_sync_plan(uuid,text[]) service_role EXECUTE".to_string(),
    ]
}

fn unintended(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%s %s %s %s%s', kind, object, grantee, privilege, CASE WHEN option_only THEN ' (grant option)' ELSE '' END)
             FROM flex_sync_private.unintended_grants()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn under_every_default_privilege_regime_only_the_readme_grants_exist() {
    for regime in REGIMES {
        let (_db, mut client) = installed_under(&format!("acl_{regime:?}").to_lowercase(), regime);
        let members: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                 WHERE e.extname = 'flex_sync' AND d.deptype = 'e'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(members > 30, "{regime:?}: the matrix sees the extension's objects ({members})");
        assert_eq!(reachable(&mut client), readme_list(), "{regime:?}");
        assert_eq!(unintended(&mut client), Vec::<String>::new(), "{regime:?}");
    }
}

#[test]
fn the_check_names_a_grant_made_later_and_restrict_acls_removes_it() {
    let (_db, mut client) = installed_under("acl_later", DefaultPrivileges::None);
    client
        .batch_execute(
            "GRANT SELECT, UPDATE ON flex_sync_log TO anon;
             GRANT SELECT (api_token) ON flex_sync_private.api_token TO authenticated;
             GRANT USAGE ON SCHEMA flex_sync_private TO authenticated;
             GRANT EXECUTE ON FUNCTION flex_sync_pending(integer, integer, integer) TO PUBLIC;
             GRANT EXECUTE ON FUNCTION flex_sync_job(uuid, text[], boolean, boolean) TO authenticated WITH GRANT OPTION;
             SET ROLE authenticated;
             GRANT EXECUTE ON FUNCTION flex_sync_job(uuid, text[], boolean, boolean) TO anon;
             RESET ROLE;",
        )
        .unwrap();
    assert_eq!(
        unintended(&mut client),
        vec![
            "ROUTINE public.flex_sync_job(uuid,text[],boolean,boolean) authenticated EXECUTE (grant option)",
            "ROUTINE public.flex_sync_pending(integer,integer,integer) PUBLIC EXECUTE",
            "SCHEMA flex_sync_private authenticated USAGE",
            "TABLE flex_sync_private.api_token authenticated SELECT (api_token)",
            "TABLE public.flex_sync_log anon SELECT",
            "TABLE public.flex_sync_log anon UPDATE",
            // Passed on by authenticated with its grant option: listed last, gone with it.
            "ROUTINE public.flex_sync_job(uuid,text[],boolean,boolean) anon EXECUTE",
        ]
    );
    client.batch_execute("SELECT flex_sync_private.restrict_acls()").unwrap();
    assert_eq!(unintended(&mut client), Vec::<String>::new());
    assert_eq!(reachable(&mut client), readme_list());
}

/// Every SECURITY DEFINER function of the extension, with its pinned search_path and its ACL.
#[test]
fn security_definer_functions_pin_their_search_path_and_are_listed_with_their_acls() {
    let (_db, mut client) = installed_under("acl_definer", DefaultPrivileges::SupabasePlatform);
    let listed: Vec<String> = client
        .query(
            "SELECT format('%s %s %s', p.oid::regprocedure, p.proconfig,
                           (SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                                             || '=' || a.privilege_type ORDER BY 1)
                            FROM aclexplode(p.proacl) a WHERE a.grantee <> p.proowner))
             FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'flex_sync'
             WHERE p.prosecdef ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // `public` is on no path: a role that may create objects there could otherwise put a better
    // match for a call in front of pg_catalog's (the planted-aggregate test below).
    let path = "{\"search_path=pg_catalog, pg_temp\"}";
    assert_eq!(
        listed,
        vec![
            format!("flex_dedupe_assignments(boolean) {path} "),
            format!("flex_sync_configure(text,text,jsonb) {path} "),
            format!("flex_sync_drift(integer) {path} "),
            format!("flex_sync_ingest_grant(name,boolean) {path} "),
            format!("flex_sync_ingest_register(regclass,text[]) {path} "),
            format!("flex_sync_ingest_requeue(bigint) {path} "),
            format!("flex_sync_ingest_result(text,bigint) {path} "),
            format!("flex_sync_ingest_submit(text,jsonb) {path} "),
            format!("flex_sync_ingest_unregister(regclass) {path} "),
            format!("flex_sync_job(uuid,text[],boolean,boolean) {path} {{authenticated=EXECUTE,service_role=EXECUTE}}"),
            format!("flex_sync_pending(integer,integer,integer) {path} "),
            format!("flex_sync_plan(uuid,text[]) {path} {{authenticated=EXECUTE,service_role=EXECUTE}}"),
            format!("flex_sync_private.ingest_admit(text,boolean) {path} "),
            format!("flex_sync_private.ingest_catalog() {path} "),
            format!("flex_sync_private.ingest_claim(text,text,text,text,jsonb) {path} "),
            format!("flex_sync_private.ingest_failure(text,jsonb,text,text) {path} "),
            format!("flex_sync_private.ingest_lease(integer,integer) {path} "),
            format!("flex_sync_private.ingest_record(text,text,text,text,uuid,jsonb) {path} "),
            format!("flex_sync_private.ingest_settle(bigint,bigint,jsonb,text,text,integer) {path} "),
            format!("flex_sync_private.on_assignment_change() {path} "),
            format!("flex_sync_private.on_crew_call_change() {path} "),
            format!("flex_sync_private.on_resource_change() {path} "),
            format!("flex_sync_private.queue_run_start(integer,integer,integer) {path} "),
            format!("flex_sync_private.queue_run_step(jsonb) {path} "),
            format!("flex_sync_requeue(uuid) {path} "),
            format!("flex_sync_resume() {path} "),
        ]
    );
}

/// anon and a signed-in technician, through PostgREST, try every call and table that could
/// read the log or the audit, change the settings, sync or clean up: each is refused with
/// 42501 and nothing changes, in Flex or in the database.
#[test]
fn anon_and_a_technician_are_refused_every_dangerous_call_through_postgrest() {
    for regime in [DefaultPrivileges::SupabasePlatform, DefaultPrivileges::LiveApp] {
        let mut rig = job_rig(&format!("acl_rpc_{regime:?}").to_lowercase(), regime);
        let (job, technician) = (rig.job.clone(), rig.technician.clone());
        let JobRig { client, sim, .. } = &mut rig;
        let client: &mut Client = client;
        let before = client.query_one("SELECT flex_sync_settings::text FROM flex_sync_settings", &[]).unwrap().get::<_, String>(0);
        let attempts = [
            format!("SELECT flex_sync_job('{job}'::uuid)::text"),
            "SELECT flex_dedupe_assignments()::text".into(),
            "SELECT flex_sync_pending()::text".into(),
            "SELECT flex_sync_requeue()::text".into(),
            "SELECT flex_sync_enable_queue()::text".into(),
            "SELECT flex_sync_install_reference_schema()::text".into(),
            "SELECT flex_sync_configure('https://attacker.example/f5/api', 'stolen')::text".into(),
            "SELECT flex_sync_private.authorize()::text".into(),
            format!("SELECT count(*)::text FROM flex_sync_private.desired_crew('{job}'::uuid, 'sound')"),
            "SELECT count(*)::text FROM flex_sync_log".into(),
            "SELECT count(*)::text FROM flex_dedupe_audit".into(),
            "SELECT count(*)::text FROM flex_sync_settings".into(),
            "SELECT count(*)::text FROM flex_sync_last_sync".into(),
            "SELECT count(*)::text FROM flex_sync_queue".into(),
            "INSERT INTO flex_sync_business_roles (department, tier, business_role_id) VALUES ('lights', 'R', 'x')".into(),
            "UPDATE flex_sync_business_roles SET business_role_id = 'x'".into(),
            "DELETE FROM flex_sync_log".into(),
            "SELECT api_token FROM flex_sync_private.api_token".into(),
            "SELECT api_token FROM flex_sync_private.effective_settings()".into(),
        ];
        for (role, claims) in [("anon", json!({"role": "anon"})), ("authenticated", json!({"role": "authenticated", "sub": technician}))] {
            for sql in &attempts {
                let outcome = postgrest(client, role, &claims, None, sql);
                assert_eq!(outcome, Err("42501".to_string()), "{regime:?} {role}: {sql}");
            }
        }
        assert_eq!(sim.total_calls(), 0, "{regime:?}: nothing reached Flex");
        let after = client.query_one("SELECT flex_sync_settings::text FROM flex_sync_settings", &[]).unwrap().get::<_, String>(0);
        assert_eq!(before, after, "{regime:?}: settings unchanged");
        let touched: i64 = client
            .query_one("SELECT (SELECT count(*) FROM flex_sync_log) + (SELECT count(*) FROM flex_sync_business_roles WHERE NOT seeded)", &[])
            .unwrap()
            .get(0);
        assert_eq!(touched, 0, "{regime:?}");
    }
}

/// A database installed under the regime, configured to a simulator, with one job of
/// `live_app_job`.
struct JobRig {
    sim: Sim,
    client: Client,
    job: String,
    /// Profile ids of a technician who is not on the crew and of an admin.
    technician: String,
    admin: String,
}

fn job_rig(test: &str, regime: DefaultPrivileges) -> JobRig {
    let (_db, mut client) = installed_under(test, regime);
    let sim = Sim::start();
    configure(&mut client, &sim, json!({}));
    let job = live_app_job(&mut client);
    let mut profile = |sql: &str| -> String { client.query_one(sql, &[]).unwrap().get(0) };
    let technician = profile("SELECT id::text FROM profiles WHERE role = 'technician' AND flex_resource_id IS NULL");
    let admin = profile("SELECT id::text FROM profiles WHERE role = 'admin'");
    JobRig { sim, client, job, technician, admin }
}

/// `flex_sync_job(job)` as a signed-in user through PostgREST.
fn sync_as(rig: &mut JobRig, user: &str) -> serde_json::Value {
    let claims = json!({"role": "authenticated", "sub": user});
    let text = postgrest(&mut rig.client, "authenticated", &claims, Some("8s"), &format!("SELECT flex_sync_job('{}'::uuid)::text", rig.job))
        .unwrap()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A job in the live app's tables (or the reference schema's, which accept the same rows): an
/// admin, a technician who is not on the crew (no Flex resource), three sound technicians with
/// enum statuses, one declined.
fn live_app_job(client: &mut Client) -> String {
    let live: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'jobs' AND column_name = 'end_time')",
            &[],
        )
        .unwrap()
        .get(0);
    // The live app's profiles need an auth user and an email; its jobs, their times.
    let (email_column, email_value, times_columns, times_values) = if live {
        (", email", ", 'u' || n || '@example.com'", ", start_time, end_time", ", now(), now() + interval '1 day'")
    } else {
        ("", "", "", "")
    };
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE people AS SELECT gen_random_uuid() AS id, n FROM generate_series(1, 5) n;
             INSERT INTO auth.users (id) SELECT id FROM people;
             INSERT INTO profiles (id, role, department, flex_resource_id{email_column})
             SELECT id, 'admin', 'sound', NULL{email_value} FROM people WHERE n = 1;
             INSERT INTO profiles (id, role, department, flex_resource_id{email_column})
             SELECT id, 'technician', 'sound', CASE WHEN n > 2 THEN 'res-live-' || n END{email_value}
             FROM people WHERE n > 1;"
        ))
        .unwrap();
    let job: String = client
        .query_one(&format!("INSERT INTO jobs (title{times_columns}) VALUES ('Live job'{times_values}) RETURNING id::text"), &[])
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO flex_crew_calls (job_id, department, flex_element_id) VALUES ($1::text::uuid, 'sound', gen_random_uuid())",
            &[&job],
        )
        .unwrap();
    // Literal statuses: the live app's column is an enum, which text does not cast to.
    client
        .execute(
            "INSERT INTO job_assignments (job_id, technician_id, sound_role, status)
             SELECT $1::text::uuid, p.id, CASE WHEN p.flex_resource_id LIKE '%3' THEN 'SND-FOH-R' END, 'confirmed'
             FROM profiles p WHERE p.flex_resource_id IN ('res-live-3', 'res-live-4')",
            &[&job],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO job_assignments (job_id, technician_id, status)
             SELECT $1::text::uuid, p.id, 'declined' FROM profiles p WHERE p.flex_resource_id = 'res-live-5'",
            &[&job],
        )
        .unwrap();
    job
}

/// The live app's own tables (enum `assignment_status` and `user_role`, RLS enabled, its
/// constraint names, its default privileges): an admin syncs through PostgREST, the declined
/// technician stays out, and the sync converges.
#[test]
fn the_live_app_schema_syncs_end_to_end_through_postgrest() {
    let mut rig = job_rig("live_app", DefaultPrivileges::LiveApp);
    let admin = rig.admin.clone();
    let result = sync_as(&mut rig, &admin);
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["summary"]["sound"]["added"], 2, "two desired, the declined one left out: {result}");
    let JobRig { client, sim, job, .. } = &mut rig;
    let element: String = client
        .query_one("SELECT flex_element_id::text FROM flex_crew_calls WHERE job_id = $1::text::uuid", &[&*job])
        .unwrap()
        .get(0);
    let mut resources: Vec<String> = sim.contacts(&element).into_iter().map(|(_, r, _)| r).collect();
    resources.sort();
    assert_eq!(resources, ["res-live-3", "res-live-4"]);
    let roles: Vec<Option<String>> = sim.contacts(&element).into_iter().map(|(_, _, role)| role).collect();
    assert!(roles.iter().any(|r| r.as_deref() == Some("2916b300-c515-11ea-a087-2a0a4490a7fb")), "the R tier role: {roles:?}");
    let rows: i64 = client.query_one("SELECT count(*) FROM flex_crew_assignments", &[]).unwrap().get(0);
    assert_eq!(rows, 2);
    sim.reset_calls();
    let again = sync(client, job);
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(sim.total_calls(), 1, "I3: a second sync only lists");
}

fn pg_dump(conninfo: &str, extra: &[&str]) -> String {
    let out = Command::new(pg_config("--bindir").join("pg_dump"))
        .arg("--dbname")
        .arg(conninfo)
        .args(extra)
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The token given to flex_sync_configure works for the sync and reaches no dump, schema or
/// data; the endpoint and options do reach it (so the dump really holds the settings).
#[test]
fn pg_dump_never_holds_the_token() {
    let (db, sim, mut client) = rig("dump_token", json!({}));
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    assert_eq!(sync(&mut client, &job.id)["ok"], true);
    for extra in [&[][..], &["--data-only"], &["--schema-only"], &["--inserts", "--column-inserts"]] {
        let dump = pg_dump(&db.conninfo, extra);
        assert!(!dump.contains(SIM_TOKEN), "the token is in pg_dump {extra:?}");
        if !extra.contains(&"--schema-only") {
            assert!(dump.contains(&sim.server.base_url()), "the settings are dumped {extra:?}");
        }
    }
}

/// With the option api_token_vault_secret, the token is read from Supabase Vault at call time
/// (a stand-in `vault.decrypted_secrets` view here) and is nowhere in the extension's tables.
#[test]
fn the_token_can_live_in_vault_and_is_read_at_call_time() {
    let db = TestDb::create("vault_token");
    let mut client = db.connect();
    let sim = Sim::start();
    client
        .batch_execute(
            "CREATE SCHEMA vault;
             CREATE TABLE vault.secrets (name text PRIMARY KEY, secret text);
             CREATE VIEW vault.decrypted_secrets AS SELECT name, secret AS decrypted_secret FROM vault.secrets;",
        )
        .unwrap();
    client.execute("INSERT INTO vault.secrets VALUES ('flex_key', $1)", &[&SIM_TOKEN]).unwrap();
    // A token stored first, then the move to Vault: the stored token goes.
    configure(&mut client, &sim, json!({}));
    let vault = json!({"api_token_vault_secret": "flex_key"}).to_string();
    let both = client
        .execute("SELECT flex_sync_configure($1, 'another-token', $2::text::jsonb)", &[&sim.server.base_url(), &vault])
        .unwrap_err();
    assert_eq!(both.as_db_error().unwrap().code().code(), "22023", "a token and a Vault secret are refused: {both}");
    client
        .execute("SELECT flex_sync_configure($1, NULL, $2::text::jsonb)", &[&sim.server.base_url(), &vault])
        .unwrap();
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    assert_eq!(sync(&mut client, &job.id)["ok"], true, "the sync used the Vault secret");
    let stored: i64 = client.query_one("SELECT count(*) FROM flex_sync_private.api_token", &[]).unwrap().get(0);
    assert_eq!(stored, 0);
    let dump = pg_dump(&db.conninfo, &["--exclude-schema", "vault"]);
    assert!(!dump.contains(SIM_TOKEN));
    assert!(dump.contains("flex_key"), "the settings name the secret");
    // A rotated secret is used by the next sync, without configuring again.
    client.execute("UPDATE vault.secrets SET secret = 'revoked'", &[]).unwrap();
    let refused = sync(&mut client, &job.id);
    assert!(refused["summary"]["sound"]["errors"].to_string().contains("flex_unauthorized"), "{refused}");
    // A secret that is not there is named in the error, before any Flex call.
    client.execute("DELETE FROM vault.secrets", &[]).unwrap();
    sim.reset_calls();
    let err = client.query_one("SELECT flex_sync_job($1::text::uuid)", &[&job.id]).unwrap_err();
    let err = err.as_db_error().unwrap();
    assert_eq!(err.code().code(), "F0000", "{err:?}");
    assert!(err.message().contains("\"flex_key\""), "{err:?}");
    assert_eq!(sim.total_calls(), 0);
}

/// Where a role may create objects in `public` (databases upgraded from PostgreSQL 14, or a
/// project that granted ALL on the schema), it plants an aggregate that matches the extension's
/// calls more exactly than pg_catalog's polymorphic one (the sync's reads build json, the dedupe's
/// jsonb: one of each is planted). The SECURITY DEFINER functions never
/// look in `public` by name, so a sync, a queue run and a dedupe never run it with the owner's
/// rights.
#[test]
fn an_aggregate_planted_in_public_never_runs_with_the_owners_rights() {
    let mut rig = job_rig("hijack", DefaultPrivileges::LiveApp);
    let admin = rig.admin.clone();
    let client = &mut rig.client;
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE planter NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .unwrap();
    client
        .batch_execute(
            "GRANT CREATE, USAGE ON SCHEMA public TO planter;
             CREATE TABLE public.hijacks (run_as text);
             GRANT INSERT ON public.hijacks TO PUBLIC;
             SET ROLE planter;
             CREATE FUNCTION public.record_hijack(state jsonb, value jsonb) RETURNS jsonb LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO public.hijacks VALUES (current_user); RETURN coalesce(state, '[]'); END $$;
             CREATE AGGREGATE public.jsonb_agg(jsonb) (sfunc = public.record_hijack, stype = jsonb);
             CREATE FUNCTION public.record_json_hijack(state json, value json) RETURNS json LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO public.hijacks VALUES (current_user); RETURN coalesce(state, '[]'); END $$;
             CREATE AGGREGATE public.json_agg(json) (sfunc = public.record_json_hijack, stype = json);
             RESET ROLE;",
        )
        .unwrap();
    // The plant works where public is looked in: a plain query as the planter runs it.
    client
        .batch_execute(
            "SET ROLE planter; SELECT jsonb_agg(x) FROM (SELECT '{}'::jsonb AS x) q;
             SELECT json_agg(x) FROM (SELECT '{}'::json AS x) q; RESET ROLE;",
        )
        .unwrap();
    let planted: i64 = client.query_one("SELECT count(*) FROM public.hijacks", &[]).unwrap().get(0);
    assert_eq!(planted, 2, "the planted aggregates are found by a caller whose path has public");
    client.batch_execute("DELETE FROM public.hijacks").unwrap();

    let result = sync_as(&mut rig, &admin);
    assert_eq!(result["ok"], true, "{result}");
    let client = &mut rig.client;
    client
        .batch_execute(
            "SELECT flex_sync_enable_queue();
             UPDATE job_assignments SET sound_role = 'SND-MON-E' WHERE sound_role IS NULL;
             SELECT flex_sync_pending();
             SELECT flex_dedupe_assignments(true);
             SELECT flex_dedupe_assignments();",
        )
        .unwrap();
    let hijacked: Vec<String> =
        client.query("SELECT run_as FROM public.hijacks", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(hijacked, Vec::<String>::new(), "the planted aggregate ran inside the extension");
}

/// The live app's jobs have an end_time: with the queue's triggers on its own tables, a profile
/// change marks the technician's jobs that have not ended, and a queue run syncs them.
#[test]
fn on_the_live_app_schema_a_profile_change_marks_only_jobs_that_have_not_ended() {
    let mut rig = job_rig("live_app_queue", DefaultPrivileges::LiveApp);
    let JobRig { client, sim, job, .. } = &mut rig;
    client.batch_execute("SELECT flex_sync_enable_queue()").unwrap();
    let ended: String = client
        .query_one(
            "INSERT INTO jobs (title, start_time, end_time) VALUES ('Ended', now() - interval '2 days', now() - interval '1 day')
             RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO flex_crew_calls (job_id, department, flex_element_id) VALUES ($1::text::uuid, 'sound', gen_random_uuid())",
            &[&ended],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO job_assignments (job_id, technician_id, sound_role, status)
             SELECT $1::text::uuid, p.id, 'SND-FOH-R', 'confirmed' FROM profiles p WHERE p.flex_resource_id = 'res-live-3'",
            &[&ended],
        )
        .unwrap();
    client.batch_execute("DELETE FROM flex_sync_private.dirty").unwrap();
    client.batch_execute("UPDATE profiles SET flex_resource_id = 'res-live-3-new' WHERE flex_resource_id = 'res-live-3'").unwrap();
    let marked = strings(client, "SELECT DISTINCT job_id::text FROM flex_sync_queue", &[]);
    assert_eq!(marked, vec![job.clone()], "the job that ended ({ended}) is not marked");
    let report = run_queue(client, "");
    assert_eq!(report["synced"], 1, "{report}");
    let element: String = client
        .query_one("SELECT flex_element_id::text FROM flex_crew_calls WHERE job_id = $1::text::uuid", &[&*job])
        .unwrap()
        .get(0);
    assert!(sim.contacts(&element).iter().any(|(_, resource, _)| resource == "res-live-3-new"));
}

/// A role that is not the owner (a self-hosted Supabase's `postgres` when `supabase_admin` made
/// the extension) runs the procedure once granted it and its two steps, as the README says, and
/// nothing of the private schema's tables; without the grants it is refused.
#[test]
fn a_role_granted_the_procedure_and_its_steps_runs_the_queue() {
    let (_db, mut client) = installed_under("acl_scheduler", DefaultPrivileges::SupabasePlatform);
    let sim = Sim::start();
    configure(&mut client, &sim, json!({}));
    client.batch_execute("SELECT flex_sync_enable_queue()").unwrap();
    let job = create_job(&mut client, &["sound"], &[("sound", "SND-PA-T")]);
    client
        .batch_execute("DO $$ BEGIN CREATE ROLE flex_scheduler_test; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .unwrap();
    client.batch_execute("SET ROLE flex_scheduler_test").unwrap();
    let refused = client.simple_query("CALL flex_sync_run_queue()").unwrap_err();
    assert_eq!(refused.as_db_error().unwrap().code().code(), "42501", "{refused}");
    client
        .batch_execute(
            "RESET ROLE;
             GRANT USAGE ON SCHEMA flex_sync_private TO flex_scheduler_test;
             GRANT EXECUTE ON PROCEDURE flex_sync_run_queue(integer, integer, integer, jsonb) TO flex_scheduler_test;
             GRANT EXECUTE ON FUNCTION flex_sync_private.queue_run_start(integer, integer, integer),
                                       flex_sync_private.queue_run_step(jsonb) TO flex_scheduler_test;
             SET ROLE flex_scheduler_test;",
        )
        .unwrap();
    let report = run_queue(&mut client, "");
    assert_eq!(report["synced"], 1, "{report}");
    let tables = client.simple_query("SELECT count(*) FROM flex_sync_private.dirty").unwrap_err();
    assert_eq!(tables.as_db_error().unwrap().code().code(), "42501", "{tables}");
    client.batch_execute("RESET ROLE").unwrap();
    assert_converged(&mut client, &sim, &job);
    // The grants are not the extension's: the check lists them, and an update would take them back.
    let listed: i64 = client
        .query_one("SELECT count(*) FROM flex_sync_private.unintended_grants() WHERE grantee = 'flex_scheduler_test'", &[])
        .unwrap()
        .get(0);
    assert_eq!(listed, 4);
    client.batch_execute("SELECT flex_sync_private.restrict_acls(); DROP OWNED BY flex_scheduler_test").unwrap();
}
