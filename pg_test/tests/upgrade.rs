//! Updates. Every release older than the current one (pg_test/released.sh installs them from
//! their commits; 1.0.0 is the first, so there is none yet) updates to what a fresh install is.
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
                    || coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
                                 FROM pg_index i WHERE i.indrelid = c.oid), '')
                    || coalesce((SELECT string_agg(k.conname || ' ' || pg_get_constraintdef(k.oid), '; ' ORDER BY 1)
                                 FROM pg_constraint k WHERE k.conrelid = c.oid), '')
                    || coalesce((SELECT string_agg(a.attname || ' ' || a.attacl::text, '; ' ORDER BY 1)
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
    // The releases before this one, installed by pg_test/released.sh from their commits (none
    // while 1.0.0 is the only release).
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
    for version in &older {
        let db = TestDb::empty(&format!("upgrade_from_{}", version.replace('.', "_")));
        let mut client = db.connect();
        supabase_platform(&mut client);
        DefaultPrivileges::SupabasePlatform.apply(&mut client);
        client.batch_execute(&format!("CREATE EXTENSION flex_sync VERSION '{version}'")).unwrap();
        write_data_and_leak_grants(&mut client);
        client.batch_execute("ALTER EXTENSION flex_sync UPDATE").unwrap();
        assert_same_objects_and_data(&mut client, &expected, version);
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
