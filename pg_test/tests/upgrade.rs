//! Updates. Every release older than the current one (pg_test/released.sh installs them from
//! their commits, as sql/releases lists them) updates to what a fresh install is, keeping its data
//! and its queue.
//! And what every update script must end with is tested on the current version: an update run
//! with `flex_sync_private.restrict_acls()` under Supabase's default privileges, over a database
//! whose grants leaked, leaves exactly the objects, ACLs and data of a fresh install.

use std::path::PathBuf;

use flex_sync_pg_test::harness::*;
use postgres::Client;

/// Every object of the extension, as the catalogs describe it: functions with their bodies,
/// settings and grants, views, tables with their columns, indexes, constraints and grants (column
/// grants too), schemas, and the tables marked for pg_dump. ACLs are
/// compared by what they grant: a NULL ACL as its default, entries sorted.
fn fingerprint(client: &mut Client) -> Vec<String> {
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION pg_temp.acl(items aclitem[], kind \"char\", owner oid) RETURNS text
             LANGUAGE sql STABLE AS
             $$ SELECT string_agg(i::text, ',' ORDER BY i::text) FROM unnest(coalesce(items, acldefault(kind, owner))) i $$",
        )
        .unwrap();
    let rows = client
        .query(
            "WITH members AS (
                 SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                 WHERE e.extname = 'flex_sync' AND d.deptype = 'e')
             SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl ' || pg_temp.acl(p.proacl, 'f', p.proowner)
             FROM members m JOIN pg_proc p ON p.oid = m.objid WHERE m.classid = 'pg_proc'::regclass
             UNION ALL
             SELECT 'relation ' || c.relkind::text || ' ' || c.oid::regclass::text || ' '
                    || coalesce(pg_get_viewdef(c.oid), '')
                    || coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                                   || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''),
                                                   ', ' ORDER BY a.attnum)
                                 FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
                    || coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY pg_get_indexdef(i.indexrelid))
                                 FROM pg_index i WHERE i.indrelid = c.oid), '')
                    || coalesce((SELECT string_agg(k.conname || ' ' || pg_get_constraintdef(k.oid), '; ' ORDER BY k.conname)
                                 FROM pg_constraint k WHERE k.conrelid = c.oid), '')
                    || coalesce((SELECT string_agg(a.attname || ' ' || a.attacl::text, '; ' ORDER BY a.attname)
                                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), '')
                    || pg_temp.acl(c.relacl, CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner)
             FROM members m JOIN pg_class c ON c.oid = m.objid WHERE m.classid = 'pg_class'::regclass
             UNION ALL
             SELECT 'schema ' || n.nspname || ' ' || pg_temp.acl(n.nspacl, 'n', n.nspowner)
             FROM members m JOIN pg_namespace n ON n.oid = m.objid WHERE m.classid = 'pg_namespace'::regclass
             UNION ALL
             -- Which tables pg_dump dumps, and with which filter.
             SELECT 'dumped ' || t.config::regclass::text || ' ' || t.condition
             FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS t(config, condition)
             WHERE e.extname = 'flex_sync'
             ORDER BY 1",
            &[],
        )
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

fn extension_dir() -> PathBuf {
    pg_config("--sharedir").join("extension")
}

/// An update script that recreates a view and a function, as releases do, so the default
/// privileges in force apply to them, and ends as every update script must: the ACLs restricted
/// again.
const NEXT_VERSION_SCRIPT: &str = "
DO $$
DECLARE
    view_sql text := pg_get_viewdef('@extschema@.flex_sync_dead_items'::regclass);
    function_sql text := pg_get_functiondef('@extschema@.flex_sync_requeue(uuid)'::regprocedure);
BEGIN
    DROP VIEW @extschema@.flex_sync_dead_items;
    EXECUTE 'CREATE VIEW @extschema@.flex_sync_dead_items AS ' || view_sql;
    DROP FUNCTION @extschema@.flex_sync_requeue(uuid);
    EXECUTE function_sql;
END
$$;
SELECT flex_sync_private.restrict_acls();
";

struct NextVersion {
    script: PathBuf,
    version: String,
}

impl NextVersion {
    fn install(current: &str) -> NextVersion {
        let version = format!("{current}-acl-test");
        let script = extension_dir().join(format!("flex_sync--{current}--{version}.sql"));
        std::fs::write(&script, NEXT_VERSION_SCRIPT).expect("write the update script");
        NextVersion { script, version }
    }
}

impl Drop for NextVersion {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.script);
    }
}

/// Data written with the installed version, and grants leaked the way a release without
/// restrict_acls() left them.
fn write_data_and_leak_grants(client: &mut Client) {
    client
        .batch_execute(
            "INSERT INTO flex_sync_business_roles (department, tier, business_role_id) VALUES ('lights', 'R', 'lights-r');
             SELECT flex_sync_configure('https://tenant.flexrentalsolutions.com/f5/api', 'token-kept-by-the-update');
             GRANT SELECT, UPDATE ON flex_sync_log, flex_dedupe_audit TO anon, authenticated;
             GRANT EXECUTE ON FUNCTION flex_sync_pending(integer, integer, integer) TO anon;
             GRANT USAGE ON SCHEMA flex_sync_private TO anon;",
        )
        .unwrap();
}

/// The versions sql/releases records, but `current`.
fn released_before(current: &str) -> Vec<String> {
    let releases = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/releases")).unwrap();
    let mut versions: Vec<String> = releases
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|v| v != current)
        .collect();
    versions.sort();
    versions
}

const DEAD_JOB: &str = "00000000-0000-4000-8000-00000000dead";
const MARKED_JOB: &str = "00000000-0000-4000-8000-0000000000aa";
const LINE: &str = "00000000-0000-4000-8000-00000000011e";

/// A dead item with a mark made after it died, an item marked twice, and a Flex line the sync
/// made, as every release keeps them.
fn write_queue_state(client: &mut Client) {
    client
        .batch_execute(&format!(
            "INSERT INTO flex_sync_private.retry_state (job_id, department, attempts, last_error, dead)
             VALUES ('{DEAD_JOB}', 'sound', 8, 'flex_http_500: gone', true);
             INSERT INTO flex_sync_private.dirty (job_id, department, marked_at) VALUES
                 ('{DEAD_JOB}', 'sound', '2026-01-01T00:00:00Z'),
                 ('{MARKED_JOB}', 'sound', now()), ('{MARKED_JOB}', 'sound', now());
             INSERT INTO flex_sync_private.lines (flex_line_item_id, flex_element_id, resource_id, created_by_sync)
             VALUES ('{LINE}', gen_random_uuid(), 'res-kept', true);"
        ))
        .unwrap();
}

fn assert_queue_state_kept(client: &mut Client, from: &str) {
    let rows: Vec<(String, i64, bool, Option<String>)> = client
        .query(
            "SELECT job_id::text, marks, dead, to_char(dirty_since AT TIME ZONE 'UTC', 'YYYY-MM-DD')
             FROM flex_sync_queue ORDER BY job_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let today: String = client.query_one("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')", &[]).unwrap().get(0);
    assert_eq!(
        rows,
        vec![
            (MARKED_JOB.to_string(), 2, false, Some(today)),
            (DEAD_JOB.to_string(), 1, true, Some("2026-01-01".to_string())),
        ],
        "from {from}"
    );
    let retention: String = client
        .query_one("SELECT options ->> 'log_retention' FROM flex_sync_private.settings", &[])
        .unwrap()
        .get(0);
    assert_eq!(retention, "30 days", "from {from}: the stored options gained the default retention");
    let line: String = client
        .query_one("SELECT flex_line_item_id::text FROM flex_sync_private.lines WHERE created_by_sync", &[])
        .unwrap()
        .get(0);
    assert_eq!(line, LINE, "from {from}: the line kept its id as a uuid");
}

fn assert_same_objects_and_data(client: &mut Client, expected: &[String], from: &str) {
    let updated = fingerprint(client);
    let head = |o: &String| o.chars().take(200).collect::<String>();
    let missing: Vec<_> = expected.iter().filter(|o| !updated.contains(o)).map(head).collect();
    let extra: Vec<_> = updated.iter().filter(|o| !expected.contains(o)).map(head).collect();
    assert!(missing.is_empty() && extra.is_empty(), "from {from}: missing {missing:#?}\nextra {extra:#?}");
    let lights: String = client
        .query_one("SELECT business_role_id FROM flex_sync_business_roles WHERE department = 'lights'", &[])
        .unwrap()
        .get(0);
    assert_eq!(lights, "lights-r", "from {from}");
    let token_kept: bool = client
        .query_one("SELECT api_token = 'token-kept-by-the-update' FROM flex_sync_private.api_token", &[])
        .unwrap()
        .get(0);
    assert!(token_kept, "from {from}");
}

#[test]
fn updates_under_supabase_defaults_leave_the_acls_and_data_of_a_fresh_install() {
    let fresh = TestDb::empty("upgrade_fresh");
    let mut fresh_client = fresh.connect();
    supabase_platform(&mut fresh_client);
    fresh_client.batch_execute("CREATE EXTENSION flex_sync").unwrap();
    let current: String =
        fresh_client.query_one("SELECT extversion FROM pg_extension WHERE extname = 'flex_sync'", &[]).unwrap().get(0);
    let expected = fingerprint(&mut fresh_client);
    assert!(expected.len() > 30, "the fingerprint sees the extension's objects: {}", expected.len());
    // The releases before this one, installed by pg_test/released.sh from their commits.
    let older: Vec<String> = fresh_client
        .query(
            "SELECT version FROM pg_available_extension_versions WHERE name = 'flex_sync' AND version <> $1
               AND version NOT LIKE '%-acl-test' ORDER BY version",
            &[&current],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(older, released_before(&current), "every earlier release is installed to update from");
    for version in &older {
        let db = TestDb::empty(&format!("upgrade_from_{}", version.replace('.', "_")));
        let mut client = db.connect();
        supabase_platform(&mut client);
        DefaultPrivileges::SupabasePlatform.apply(&mut client);
        client.batch_execute(&format!("CREATE EXTENSION flex_sync VERSION '{version}'")).unwrap();
        write_data_and_leak_grants(&mut client);
        write_queue_state(&mut client);
        client.batch_execute("ALTER EXTENSION flex_sync UPDATE").unwrap();
        assert_same_objects_and_data(&mut client, &expected, version);
        assert_queue_state_kept(&mut client, version);
    }

    // The current version, updated by a script that recreates objects under the defaults.
    let db = TestDb::empty("upgrade_defaults");
    let mut client = db.connect();
    supabase_platform(&mut client);
    client.batch_execute("CREATE EXTENSION flex_sync").unwrap();
    write_data_and_leak_grants(&mut client);
    DefaultPrivileges::SupabasePlatform.apply(&mut client);
    assert_ne!(fingerprint(&mut client), expected, "the leaked grants show before the update");
    let next = NextVersion::install(&current);
    client.batch_execute(&format!("ALTER EXTENSION flex_sync UPDATE TO '{}'", next.version)).unwrap();
    assert_same_objects_and_data(&mut client, &expected, &current);
}

/// An update brings cheaper default rules, but a rule its owner replaced is kept as it is: from
/// the last release, with `desired_crew` replaced, the update keeps that replacement and renews
/// `authorize`, still the released default, to what a fresh install has.
#[test]
fn an_update_keeps_a_replaced_rule_and_renews_a_default_one() {
    let fresh = TestDb::empty("upgrade_rules_fresh");
    let mut fresh_client = fresh.connect();
    fresh_client.batch_execute("CREATE EXTENSION flex_sync").unwrap();
    let body = |client: &mut Client, function: &str| -> String {
        client.query_one("SELECT pg_get_functiondef($1::text::regprocedure)", &[&function]).unwrap().get(0)
    };
    let fresh_authorize = body(&mut fresh_client, "flex_sync_private.authorize()");
    let current: String =
        fresh_client.query_one("SELECT extversion FROM pg_extension WHERE extname = 'flex_sync'", &[]).unwrap().get(0);
    let last = released_before(&current).pop().expect("a release before this one");

    let db = TestDb::empty("upgrade_rules");
    let mut client = db.connect();
    client.batch_execute(&format!("CREATE EXTENSION flex_sync VERSION '{last}'")).unwrap();
    let released_authorize = body(&mut client, "flex_sync_private.authorize()");
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION flex_sync_private.desired_crew(p_job_id uuid, p_department text)
             RETURNS TABLE (technician_id uuid, flex_resource_id text, role_code text)
             LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
             BEGIN
                 RETURN QUERY SELECT ja.technician_id, p.flex_resource_id, NULL::text
                 FROM public.job_assignments ja JOIN public.profiles p ON p.id = ja.technician_id
                 WHERE ja.job_id = p_job_id AND ja.status = 'confirmed';
             END
             $$",
        )
        .unwrap();
    let replaced = body(&mut client, "flex_sync_private.desired_crew(uuid, text)");
    client.batch_execute("ALTER EXTENSION flex_sync UPDATE").unwrap();
    assert_eq!(body(&mut client, "flex_sync_private.desired_crew(uuid, text)"), replaced, "the owner's rule is kept");
    assert_ne!(released_authorize, fresh_authorize, "this update changes the default authorize()");
    assert_eq!(body(&mut client, "flex_sync_private.authorize()"), fresh_authorize, "the default rule is renewed");
}
