//! The throwaway server is what the harness promises: the PostgreSQL major whose pg_config the
//! suite runs with (15, or 17 inside the Debian 13 root) with pg_cron preloaded and flex_sync
//! installable.

use flex_sync_pg_test::harness::{server_conninfo, TestDb};
use postgres::{Client, NoTls};

#[test]
fn the_server_is_the_major_under_test_with_pg_cron_preloaded() {
    let pg_config = std::env::var("FLEX_SYNC_PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let built_for = String::from_utf8(std::process::Command::new(&pg_config).arg("--version").output().unwrap().stdout).unwrap();
    let major = built_for.trim().trim_start_matches("PostgreSQL ").split('.').next().unwrap().to_string();
    assert!(["15", "17"].contains(&major.as_str()), "{built_for}");
    let mut admin = Client::connect(&server_conninfo(), NoTls).unwrap();
    let version: String = admin.query_one("SHOW server_version_num", &[]).unwrap().get(0);
    assert!(version.starts_with(&major), "server {version}, pg_config {built_for}");
    let preload: String = admin.query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
    assert!(preload.contains("pg_cron"), "{preload}");
    admin.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron").unwrap();
    let jobs: i64 = admin.query_one("SELECT count(*) FROM cron.job", &[]).unwrap().get(0);
    assert!(jobs >= 0);
}

#[test]
fn drop_extension_keeps_application_data() {
    let db = TestDb::create("dropext");
    let mut client = db.connect();
    client.batch_execute("INSERT INTO jobs (title) VALUES ('kept')").unwrap();
    client.batch_execute("DROP EXTENSION flex_sync").unwrap();
    let kept: i64 = client.query_one("SELECT count(*) FROM jobs WHERE title = 'kept'", &[]).unwrap().get(0);
    assert_eq!(kept, 1);
    let private: bool = client
        .query_one("SELECT to_regnamespace('flex_sync_private') IS NULL", &[])
        .unwrap()
        .get(0);
    assert!(private, "the extension's own schema goes with it");
}
