//! Upgrades: every released version, updated with the scripts in sql/, ends with exactly the
//! objects a fresh install of the current version has. The released install scripts live in
//! sql/archive/ and pg_test/test.sh installs them next to the current one.

use flex_sync_pg_test::harness::*;
use postgres::Client;

/// Every object of the extension, as the catalogs describe it: functions with their bodies,
/// settings and grants, views, tables with their columns, indexes and grants, and the version.
fn fingerprint(client: &mut Client) -> Vec<String> {
    let rows = client
        .query(
            "WITH members AS (
                 SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                 WHERE e.extname = 'flex_sync' AND d.deptype = 'e')
             SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '')
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
                    || coalesce(c.relacl::text, '')
             FROM members m JOIN pg_class c ON c.oid = m.objid WHERE m.classid = 'pg_class'::regclass
             UNION ALL
             SELECT 'version ' || extversion FROM pg_extension WHERE extname = 'flex_sync'
             ORDER BY 1",
            &[],
        )
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[test]
fn every_released_version_upgrades_to_what_a_fresh_install_is() {
    let fresh = TestDb::empty("upgrade_fresh");
    let mut fresh_client = fresh.connect();
    fresh_client.batch_execute("CREATE EXTENSION flex_sync").unwrap();
    let current: String =
        fresh_client.query_one("SELECT extversion FROM pg_extension WHERE extname = 'flex_sync'", &[]).unwrap().get(0);
    let expected = fingerprint(&mut fresh_client);
    assert!(expected.len() > 30, "the fingerprint sees the extension's objects: {}", expected.len());

    let released: Vec<String> = fresh_client
        .query(
            "SELECT version FROM pg_available_extension_versions WHERE name = 'flex_sync' AND version <> $1 ORDER BY version",
            &[&current],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        released.contains(&"0.1.0".to_string()),
        "released install scripts are not installed (pg_test/test.sh copies sql/archive/*.sql): {released:?}"
    );
    for version in released {
        let db = TestDb::empty(&format!("upgrade_from_{}", version.replace('.', "_")));
        let mut client = db.connect();
        client.batch_execute(&format!("CREATE EXTENSION flex_sync VERSION '{version}'")).unwrap();
        assert_ne!(fingerprint(&mut client), expected, "{version} differs from {current} before the update");
        if version == "0.3.0" {
            // 0.4.0's library no longer has what 0.3.0's SQL calls: a clear error until the update.
            let mut tx = client.transaction().unwrap();
            tx.batch_execute("SELECT flex_sync_install_reference_schema()").unwrap();
            let err = tx.query_one("SELECT flex_dedupe_assignments(true)", &[]).unwrap_err();
            let err = err.as_db_error().expect("a server error");
            assert_eq!(err.code().code(), "55000", "{err:?}");
            assert!(err.hint().is_some_and(|h| h.contains("ALTER EXTENSION flex_sync UPDATE")), "{err:?}");
            tx.rollback().unwrap();
        }
        client.batch_execute("ALTER EXTENSION flex_sync UPDATE").unwrap();
        let upgraded = fingerprint(&mut client);
        let head = |o: &String| o.chars().take(160).collect::<String>();
        let missing: Vec<_> = expected.iter().filter(|o| !upgraded.contains(o)).map(head).collect();
        let extra: Vec<_> = upgraded.iter().filter(|o| !expected.contains(o)).map(head).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{version} -> {current}:\nmissing {missing:#?}\nextra {extra:#?}");
        // The updated functions run: the queue drains and the dedupe reports on the empty tables.
        client.batch_execute("SELECT flex_sync_install_reference_schema()").unwrap();
        let drained: String = client.query_one("SELECT flex_sync_pending()::text", &[]).unwrap().get(0);
        assert!(drained.contains("\"synced\": 0"), "{drained}");
        let dedupe: String =
            client.query_one("SELECT flex_dedupe_assignments(dry_run => true)::text", &[]).unwrap().get(0);
        assert!(dedupe.contains("\"duplicate_groups\": 0"), "{dedupe}");
    }
}
