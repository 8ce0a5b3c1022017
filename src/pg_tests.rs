// SQL-level behaviour inside one backend (tier 2). Each test runs in a transaction that is
// rolled back; concurrency and real Flex traffic are tested out of process in pg_test/.
use pgrx::prelude::*;

fn json(sql: &str) -> serde_json::Value {
    Spi::get_one::<pgrx::JsonB>(sql).unwrap().unwrap().0
}

#[pg_test]
fn configure_masks_the_token_everywhere() {
    let out = json(
        "SELECT flex_sync_configure('https://acme.flexrentalsolutions.com/f5/api/', 'secret-token-123', '{\"max_parallel_requests\": 8}')",
    );
    assert_eq!(out["base_url"], "https://acme.flexrentalsolutions.com/f5/api");
    assert_eq!(out["api_token"], "********");
    assert_eq!(out["options"]["max_parallel_requests"], 8);
    let view = Spi::get_one::<String>("SELECT api_token FROM flex_sync_settings").unwrap();
    assert_eq!(view.as_deref(), Some("********"));
    let leaked = Spi::get_one::<bool>(
        "SELECT count(*) > 0 FROM flex_sync_settings WHERE row_to_json(flex_sync_settings)::text LIKE '%secret-token%'",
    )
    .unwrap();
    assert_eq!(leaked, Some(false));
    // A NULL token keeps the stored one; options merge over the stored ones.
    let again = json("SELECT flex_sync_configure('https://acme.flexrentalsolutions.com/f5/api', NULL, '{\"orphan_policy\": \"keep\"}')");
    assert_eq!(again["api_token"], "********");
    assert_eq!(again["options"]["max_parallel_requests"], 8);
    assert_eq!(again["options"]["orphan_policy"], "keep");
}

#[pg_test(error = "invalid flex_sync settings: unknown option \"max_paralel_requests\"")]
fn configure_rejects_an_unknown_option() {
    Spi::run("SELECT flex_sync_configure('https://acme.flexrentalsolutions.com/f5/api', 't', '{\"max_paralel_requests\": 8}')")
        .unwrap();
}

#[pg_test(error = "invalid flex_sync settings: base_url \"http://acme.flexrentalsolutions.com/f5/api\" is not usable: it must use https (http is accepted only with allow_insecure_loopback)")]
fn configure_rejects_plain_http() {
    Spi::run("SELECT flex_sync_configure('http://acme.flexrentalsolutions.com/f5/api', 't')").unwrap();
}

#[pg_test]
fn reference_schema_is_idempotent_and_not_part_of_the_extension() {
    Spi::run("SELECT flex_sync_install_reference_schema()").unwrap();
    Spi::run("SELECT flex_sync_install_reference_schema()").unwrap();
    let members = Spi::get_one::<i64>(
        "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE e.extname = 'flex_sync' AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass
           AND d.objid IN ('public.jobs'::regclass, 'public.flex_crew_assignments'::regclass)",
    )
    .unwrap();
    assert_eq!(members, Some(0));
}

#[pg_test]
fn desired_crew_follows_the_default_rule() {
    Spi::run("SELECT flex_sync_install_reference_schema()").unwrap();
    Spi::run(
        "INSERT INTO jobs (id) VALUES ('00000000-0000-0000-0000-00000000000a');
         INSERT INTO profiles (id, department, flex_resource_id) VALUES
           ('00000000-0000-0000-0000-000000000001', 'sound', 'res-1'),   -- role for sound
           ('00000000-0000-0000-0000-000000000002', 'sound', 'res-2'),   -- no role, sound dept
           ('00000000-0000-0000-0000-000000000003', 'sound', 'res-3'),   -- declined
           ('00000000-0000-0000-0000-000000000004', 'sound', ' '),       -- no resource
           ('00000000-0000-0000-0000-000000000005', 'sound', 'res-5');   -- a lights role only
         INSERT INTO job_assignments (job_id, technician_id, sound_role, lights_role, status) VALUES
           ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000001', 'SND-FOH-R', NULL, 'invited'),
           ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000002', NULL, NULL, 'confirmed'),
           ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000003', 'SND-PA-T', NULL, 'declined'),
           ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000004', 'SND-PA-T', NULL, 'confirmed'),
           ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000005', NULL, 'LGT-PA-T', 'confirmed');",
    )
    .unwrap();
    let got = Spi::get_one::<String>(
        "SELECT string_agg(flex_resource_id || ':' || coalesce(role_code, '-'), ',' ORDER BY flex_resource_id)
         FROM flex_sync_private.desired_crew('00000000-0000-0000-0000-00000000000a', 'sound')",
    )
    .unwrap();
    assert_eq!(got.as_deref(), Some("res-1:SND-FOH-R,res-2:-"));
}

#[pg_test(error = "job_id must not be NULL")]
fn sync_refuses_a_null_job() {
    Spi::run("SELECT flex_sync_install_reference_schema()").unwrap();
    Spi::run("SELECT flex_sync_job(NULL)").unwrap();
}

#[pg_test(error = "invalid departments: departments is an empty array")]
fn sync_refuses_an_empty_department_list() {
    Spi::run("SELECT flex_sync_install_reference_schema()").unwrap();
    Spi::run("SELECT flex_sync_job(gen_random_uuid(), '{}')").unwrap();
}

#[pg_test(error = "flex_crew_assignments has no unique constraint on (crew_call_id, technician_id)")]
fn sync_refuses_a_table_without_the_unique_constraint() {
    Spi::run("SELECT flex_sync_install_reference_schema()").unwrap();
    Spi::run(
        "ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key",
    )
    .unwrap();
    Spi::run("SELECT flex_sync_job(gen_random_uuid())").unwrap();
}

#[pg_test]
fn nothing_is_executable_by_public() {
    let granted_to_public = Spi::get_one::<i64>(
        "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a
         WHERE p.proname IN ('flex_sync_job', 'flex_sync_configure', 'flex_sync_install_reference_schema')
           AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'",
    )
    .unwrap();
    assert_eq!(granted_to_public, Some(0));
    let definer = Spi::get_one::<bool>("SELECT prosecdef FROM pg_proc WHERE proname = 'flex_sync_job'").unwrap();
    assert_eq!(definer, Some(true));
}
