//! The source-preserving merge against a real server: the seed's three test cases, equal cursors
//! across a batch boundary, columns that do not match, full mode with the guard, a foreign table
//! from a second database as the source, and two merges of one target at once.

use flex_sync_pg_test::harness::*;
use postgres::Client;
use serde_json::Value;

/// A target like the seed's `jobshead`, owned per row by `source` ('D' desktop, 'M' mobile), and a
/// staging table for the desktop's rows.
fn setup(test: &str) -> (TestDb, Client) {
    let db = TestDb::empty(test);
    let mut client = db.connect();
    client
        .batch_execute(
            "CREATE EXTENSION flex_sync;
             CREATE TABLE jobshead (job_id integer PRIMARY KEY, client_id integer, job_name text, status text,
                                    updated_at timestamptz, source text NOT NULL DEFAULT 'D');
             CREATE TABLE staging (job_id integer, client_id integer, job_name text, status text, updated_at timestamptz);",
        )
        .unwrap();
    (db, client)
}

fn merge(client: &mut Client, options: &str) -> Value {
    let text: String = client
        .query_one(
            "SELECT flex_sync_merge('jobshead', 'staging', ARRAY['job_id'], 'source', 'D', $1::text::jsonb)::text",
            &[&options],
        )
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn rows(client: &mut Client) -> Vec<String> {
    strings(client, "SELECT job_id || ' ' || coalesce(status, '-') || ' ' || source FROM jobshead ORDER BY job_id", &[])
}

const INCREMENTAL: &str = r#"{"cursor_column": "updated_at"}"#;

#[test]
fn the_seeds_three_cases_mobile_rows_survive_and_the_desktop_wins_its_own_rows() {
    let (_db, mut client) = setup("merge_seed");
    // 1. A job made on mobile survives the forward sync.
    client.batch_execute("INSERT INTO jobshead VALUES (99999, 1, 'Mobile Test Job', 'Open', now(), 'M')").unwrap();
    client
        .batch_execute(
            "INSERT INTO staging VALUES (100, 1, 'Desktop job', 'Open', '2025-10-30 09:00'),
                                        (300, 1, 'Desk 300', 'Open', '2025-10-30 09:30')",
        )
        .unwrap();
    let first = merge(&mut client, INCREMENTAL);
    assert_eq!((first["inserted"].as_i64(), first["conflicts"].as_i64()), (Some(2), Some(0)), "{first}");
    assert_eq!(rows(&mut client), vec!["100 Open D", "300 Open D", "99999 Open M"]);
    // 2. Mobile makes job 200; the desktop updates job 100: both kept.
    client.batch_execute("INSERT INTO jobshead VALUES (200, 1, 'Mobile 200', 'Open', now(), 'M')").unwrap();
    client.batch_execute("UPDATE staging SET status = 'Quoted', updated_at = '2025-10-30 10:00' WHERE job_id = 100").unwrap();
    let second = merge(&mut client, INCREMENTAL);
    assert_eq!((second["updated"].as_i64(), second["inserted"].as_i64()), (Some(1), Some(0)), "{second}");
    assert_eq!(rows(&mut client), vec!["100 Quoted D", "200 Open M", "300 Open D", "99999 Open M"]);
    // 3. Mobile edits the desktop's job 300, then the desktop updates it again: the desktop's
    //    later version wins its own row.
    client.batch_execute("UPDATE jobshead SET status = 'Completed', updated_at = '2025-10-30 10:30' WHERE job_id = 300").unwrap();
    client.batch_execute("UPDATE staging SET status = 'On Hold', updated_at = '2025-10-30 11:00' WHERE job_id = 300").unwrap();
    merge(&mut client, INCREMENTAL);
    assert_eq!(rows(&mut client), vec!["100 Quoted D", "200 Open M", "300 On Hold D", "99999 Open M"]);
    // A key mobile took over (its row now says 'M') is a conflict: nothing changes, both kept.
    client.batch_execute("UPDATE jobshead SET source = 'M', status = 'Mobile owns it' WHERE job_id = 100").unwrap();
    client.batch_execute("UPDATE staging SET status = 'Desk again', updated_at = '2025-10-30 12:00' WHERE job_id = 100").unwrap();
    let clash = merge(&mut client, INCREMENTAL);
    assert_eq!((clash["conflicts"].as_i64(), clash["updated"].as_i64()), (Some(1), Some(0)), "{clash}");
    assert_eq!(clash["other_owner_rows_before"], clash["other_owner_rows_after"]);
    let kept = strings(
        &mut client,
        "SELECT (source_row ->> 'status') || ' / ' || (target_row ->> 'status') || ' / ' || target_owner FROM flex_merge_conflicts",
        &[],
    );
    assert_eq!(kept, vec!["Desk again / Mobile owns it / M"]);
    assert_eq!(rows(&mut client)[0], "100 Mobile owns it M");
}

#[test]
fn equal_cursors_across_a_batch_boundary_skip_no_row_and_the_watermark_moves_with_the_rows() {
    let (_db, mut client) = setup("merge_boundary");
    client
        .batch_execute(
            "INSERT INTO staging SELECT i, 1, 'job ' || i, 'Open', '2025-11-01 08:00' FROM generate_series(1, 5) i",
        )
        .unwrap();
    let batch = r#"{"cursor_column": "updated_at", "batch_size": 2}"#;
    let mut merged = Vec::new();
    for _ in 0..4 {
        merged.push(merge(&mut client, batch)["inserted"].as_i64().unwrap());
    }
    assert_eq!(merged, vec![2, 2, 1, 0], "every row of one timestamp, two at a time");
    assert_eq!(rows(&mut client).len(), 5);
    let watermark = strings(&mut client, "SELECT cursor_value || ' ' || key_value::text FROM flex_sync_private.merge_watermarks", &[]);
    assert_eq!(watermark, vec!["2025-11-01 08:00:00+00 [\"5\"]"]);
    // A rolled-back merge leaves the watermark where it was.
    client.batch_execute("INSERT INTO staging VALUES (6, 1, 'job 6', 'Open', '2025-11-01 09:00')").unwrap();
    client.batch_execute("BEGIN").unwrap();
    merge(&mut client, batch);
    client.batch_execute("ROLLBACK").unwrap();
    assert_eq!(strings(&mut client, "SELECT key_value::text FROM flex_sync_private.merge_watermarks", &[]), vec!["[\"5\"]"]);
    // A row that arrives late, behind the watermark, is found with a look-back.
    client.batch_execute("INSERT INTO staging VALUES (0, 1, 'late', 'Open', '2025-11-01 07:59')").unwrap();
    assert_eq!(merge(&mut client, INCREMENTAL)["inserted"], 1, "job 6");
    let late = merge(&mut client, r#"{"cursor_column": "updated_at", "lookback": "2 hours"}"#);
    assert_eq!((late["inserted"].as_i64(), late["unchanged"].as_i64()), (Some(1), Some(6)), "{late}");
    // A dry run counts and writes nothing, not even its log row.
    client.batch_execute("UPDATE staging SET status = 'Closed', updated_at = '2025-11-02' WHERE job_id = 3").unwrap();
    let log_before = strings(&mut client, "SELECT count(*)::text FROM flex_merge_log", &[]);
    let dry = merge(&mut client, r#"{"cursor_column": "updated_at", "dry_run": true}"#);
    assert_eq!((dry["updated"].as_i64(), dry["dry_run"].as_bool()), (Some(1), Some(true)), "{dry}");
    assert!(!rows(&mut client).contains(&"3 Closed D".to_string()));
    assert_eq!(strings(&mut client, "SELECT count(*)::text FROM flex_merge_log", &[]), log_before);
}

#[test]
fn a_missing_or_mistyped_column_is_a_clear_error_and_nothing_is_written() {
    let (_db, mut client) = setup("merge_columns");
    client.batch_execute("INSERT INTO staging VALUES (1, 1, 'one', 'Open', now())").unwrap();
    let attempt = |client: &mut Client, sql: &str| -> String {
        match client.batch_execute(sql) {
            Ok(()) => "ok".into(),
            Err(e) => {
                let db = e.as_db_error().expect("a database error");
                format!("{}: {}", db.code().code(), db.message())
            }
        }
    };
    let call = |options: &str, key: &str| {
        format!("SELECT flex_sync_merge('jobshead', 'staging', ARRAY['{key}'], 'source', 'D', '{options}')")
    };
    assert_eq!(attempt(&mut client, &call(r#"{"cursor_column": "changed_at"}"#, "job_id")),
               "42703: flex_sync_merge: the source public.staging has no cursor column \"changed_at\"");
    assert_eq!(attempt(&mut client, &call(r#"{"mode": "full"}"#, "jobid")),
               "42703: flex_sync_merge: the target public.jobshead has no key column {jobid}");
    assert!(attempt(&mut client, &call(r#"{"mode": "full", "batch": 5}"#, "job_id")).starts_with("22023: flex_sync_merge: unknown option \"batch\""));
    assert!(attempt(&mut client, &call(r#"{}"#, "job_id")).starts_with("22023: flex_sync_merge: an incremental merge needs"));
    client.batch_execute("ALTER TABLE staging ALTER COLUMN client_id TYPE text").unwrap();
    assert_eq!(attempt(&mut client, &call(r#"{"mode": "full"}"#, "job_id")),
               "42804: flex_sync_merge: the source does not fit the target: column \"client_id\" is of type integer but expression is of type text");
    client.batch_execute("ALTER TABLE staging ALTER COLUMN client_id TYPE bigint USING 1").unwrap();
    client.batch_execute("INSERT INTO staging VALUES (1, 2, 'one again', 'Open', now())").unwrap();
    assert_eq!(attempt(&mut client, &call(r#"{"mode": "full"}"#, "job_id")),
               "21000: flex_sync_merge: the source has more than one row for the key [\"1\"]");
    assert!(rows(&mut client).is_empty(), "nothing written");
    assert_eq!(strings(&mut client, "SELECT count(*)::text FROM flex_merge_log", &[]), vec!["0"]);
    // bigint into integer is an assignment cast: accepted once the source is clean.
    client.batch_execute("DELETE FROM staging WHERE job_name = 'one again'").unwrap();
    assert_eq!(attempt(&mut client, &call(r#"{"mode": "full"}"#, "job_id")), "ok");
    // Generated and identity columns of the target are left to the target.
    client
        .batch_execute(
            "CREATE TABLE gen (id integer PRIMARY KEY, n integer, twice integer GENERATED ALWAYS AS (n * 2) STORED,
                               serial_no bigint GENERATED ALWAYS AS IDENTITY, owner text);
             CREATE TABLE gen_src (id integer, n integer, twice integer, serial_no bigint);
             INSERT INTO gen_src VALUES (1, 21, 0, 77);
             SELECT flex_sync_merge('gen', 'gen_src', ARRAY['id'], 'owner', 'D', '{\"mode\": \"full\"}');",
        )
        .unwrap();
    let gen = strings(&mut client, "SELECT twice || ' ' || serial_no FROM gen", &[]);
    assert_eq!(gen, vec!["42 77"], "generated computed; identity ALWAYS taken from the source");
    // The identity's sequence moved past the value taken: the application's next row fits.
    client.batch_execute("INSERT INTO gen (id, n) VALUES (2, 1)").unwrap();
    assert_eq!(strings(&mut client, "SELECT serial_no::text FROM gen WHERE id = 2", &[]), vec!["78"]);
    // A value the target's type cannot hold is an error, not a truncation.
    client
        .batch_execute("CREATE TABLE short (id integer PRIMARY KEY, code varchar(3), owner text);
                        CREATE TABLE short_src (id integer, code text);
                        INSERT INTO short_src VALUES (1, 'abcdefgh');")
        .unwrap();
    assert!(attempt(&mut client, "SELECT flex_sync_merge('short', 'short_src', ARRAY['id'], 'owner', 'D', '{\"mode\": \"full\"}')")
        .starts_with("22001: flex_sync_merge: the source does not fit the target: value too long"));
    assert_eq!(strings(&mut client, "SELECT count(*)::text FROM short", &[]), vec!["0"]);
}

#[test]
fn what_a_review_found_stays_fixed() {
    let (_db, mut client) = setup("merge_review");
    let attempt = |client: &mut Client, sql: &str| -> String {
        match client.batch_execute(sql) {
            Ok(()) => "ok".into(),
            Err(e) => e.as_db_error().map(|d| format!("{}: {}", d.code().code(), d.message())).unwrap_or_default(),
        }
    };
    // The source renumbers every key: as many inserts as deletes, and the deletes are still held.
    client
        .batch_execute(
            "INSERT INTO jobshead SELECT i, 1, 'old ' || i, 'Open', now(), 'D' FROM generate_series(1, 10) i;
             INSERT INTO staging SELECT i, 1, 'new ' || i, 'Open', now() FROM generate_series(11, 20) i;",
        )
        .unwrap();
    let dry = merge(&mut client, r#"{"mode": "full", "dry_run": true}"#);
    let real = merge(&mut client, r#"{"mode": "full"}"#);
    assert_eq!((dry["held"]["reason"].as_str(), real["held"]["reason"].as_str()), (Some("max_delete_fraction"), Some("max_delete_fraction")));
    assert_eq!((real["inserted"].as_i64(), real["deleted"].as_i64()), (Some(10), Some(0)), "{real}");
    // A source row without a key, the source as the target, options that cannot go together.
    client.batch_execute("INSERT INTO staging VALUES (NULL, 1, 'no key', 'Open', now())").unwrap();
    assert!(attempt(&mut client, "SELECT flex_sync_merge('jobshead', 'staging', ARRAY['job_id'], 'source', 'D', '{\"mode\": \"full\"}')")
        .starts_with("22004: flex_sync_merge: the source has a row without a key"));
    assert!(attempt(&mut client, "SELECT flex_sync_merge('jobshead', 'jobshead', ARRAY['job_id'], 'source', 'D', '{\"mode\": \"full\"}')")
        .starts_with("22023: flex_sync_merge: the source is the target"));
    assert!(attempt(&mut client, "SELECT flex_sync_merge('jobshead', 'staging', ARRAY['job_id'], 'source', 'D', '{\"cursor_column\": \"updated_at\", \"lookback\": \"1 hour\", \"batch_size\": 5}')")
        .starts_with("22023: flex_sync_merge: batch_size must be a positive integer, and cannot go with lookback"));
    assert!(attempt(&mut client, "SELECT flex_sync_merge('jobshead', 'staging', ARRAY['job_id'], 'source', 'D', '{\"cursor_column\": \"client_id\", \"lookback\": \"1 hour\"}')")
        .starts_with("22023: flex_sync_merge: lookback needs a time cursor"));
    assert!(attempt(&mut client, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT flex_sync_merge('jobshead', 'staging', ARRAY['job_id'], 'source', 'D', '{\"mode\": \"full\"}')")
        .starts_with("25000: flex_sync_merge cannot run in a REPEATABLE READ transaction"));
    client.batch_execute("ROLLBACK").unwrap();
    // An owner column of another type is compared in its own type; a json column (no equality
    // operator) is compared all the same.
    client
        .batch_execute(
            "CREATE TABLE typed (id integer PRIMARY KEY, doc json, owner integer);
             CREATE TABLE typed_src (id integer, doc json);
             INSERT INTO typed_src VALUES (1, '{\"a\": 1}');
             SELECT flex_sync_merge('typed', 'typed_src', ARRAY['id'], 'owner', '07', '{\"mode\": \"full\"}');
             UPDATE typed_src SET doc = '{\"a\": 2}';",
        )
        .unwrap();
    let text: String = client
        .query_one("SELECT flex_sync_merge('typed', 'typed_src', ARRAY['id'], 'owner', '7', '{\"mode\": \"full\"}')::text", &[])
        .unwrap()
        .get(0);
    let typed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((typed["updated"].as_i64(), typed["conflicts"].as_i64()), (Some(1), Some(0)), "{typed}");
}

#[test]
fn full_mode_deletes_only_the_owners_missing_rows_audited_and_guarded() {
    let (_db, mut client) = setup("merge_full");
    client
        .batch_execute(
            "INSERT INTO staging SELECT i, 1, 'job ' || i, 'Open', now() FROM generate_series(1, 10) i;
             INSERT INTO jobshead SELECT i, 1, 'mobile ' || i, 'Open', now(), 'M' FROM generate_series(101, 105) i;",
        )
        .unwrap();
    assert_eq!(merge(&mut client, r#"{"mode": "full"}"#)["inserted"], 10);
    // Two go from the source: deleted, audited; the mobile rows stay.
    client.batch_execute("DELETE FROM staging WHERE job_id IN (9, 10)").unwrap();
    let two = merge(&mut client, r#"{"mode": "full"}"#);
    assert_eq!((two["deleted"].as_i64(), two["held"].is_null()), (Some(2), true), "{two}");
    assert_eq!(strings(&mut client, "SELECT key::text FROM flex_merge_audit ORDER BY (key ->> 0)::int", &[]), vec!["[\"9\"]", "[\"10\"]"]);
    assert_eq!(strings(&mut client, "SELECT (removed_row ->> 'job_name') FROM flex_merge_audit ORDER BY (key ->> 0)::int", &[]), vec!["job 9", "job 10"]);
    // The source comes back nearly empty: more than half of the owner's rows would go: held.
    client.batch_execute("DELETE FROM staging WHERE job_id > 2").unwrap();
    let held = merge(&mut client, r#"{"mode": "full"}"#);
    assert_eq!((held["deleted"].as_i64(), held["held"]["reason"].as_str(), held["held"]["deletes"].as_i64()),
               (Some(0), Some("max_delete_fraction"), Some(6)), "{held}");
    assert_eq!(rows(&mut client).len(), 13);
    let forced = merge(&mut client, r#"{"mode": "full", "force": true}"#);
    assert_eq!(forced["deleted"], 6);
    // Emptied: held whatever the size, and never a row of another owner.
    client.batch_execute("DELETE FROM staging").unwrap();
    assert_eq!(merge(&mut client, r#"{"mode": "full"}"#)["held"]["reason"], "empty_desired_set");
    let wiped = merge(&mut client, r#"{"mode": "full", "force": true}"#);
    assert_eq!((wiped["other_owner_rows_before"].as_i64(), wiped["other_owner_rows_after"].as_i64()), (Some(5), Some(5)));
    assert_eq!(rows(&mut client).len(), 5, "only the mobile rows are left");
}

#[test]
fn a_foreign_table_from_another_database_is_a_source() {
    let desktop = TestDb::empty("merge_desktop");
    desktop
        .connect()
        .batch_execute(
            "CREATE TABLE jobs_export (job_id integer, client_id integer, job_name text, status text, updated_at timestamptz);
             INSERT INTO jobs_export VALUES (1, 1, 'from the desktop', 'Open', '2025-10-01'), (2, 1, 'another', 'Open', '2025-10-02');",
        )
        .unwrap();
    let (_db, mut client) = setup("merge_fdw");
    let dbname = desktop.conninfo.rsplit("dbname=").next().unwrap().to_string();
    let port = server_conninfo().split_whitespace().find_map(|p| p.strip_prefix("port=").map(str::to_string)).unwrap();
    client
        .batch_execute(&format!(
            "CREATE EXTENSION postgres_fdw;
             CREATE SERVER desktop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '{port}', dbname '{dbname}');
             CREATE USER MAPPING FOR CURRENT_USER SERVER desktop OPTIONS (user 'postgres');
             CREATE FOREIGN TABLE desktop_jobs (job_id integer, client_id integer, job_name text, status text, updated_at timestamptz)
                 SERVER desktop OPTIONS (table_name 'jobs_export');"
        ))
        .unwrap();
    let text: String = client
        .query_one(
            "SELECT flex_sync_merge('jobshead', 'desktop_jobs', ARRAY['job_id'], 'source', 'D', '{\"cursor_column\": \"updated_at\"}')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let result: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["inserted"], 2, "{result}");
    assert_eq!(rows(&mut client), vec!["1 Open D", "2 Open D"]);
}

#[test]
fn two_merges_of_one_target_run_one_after_the_other() {
    let (db, mut client) = setup("merge_concurrent");
    client.batch_execute("INSERT INTO staging SELECT i, 1, 'job ' || i, 'Open', now() FROM generate_series(1, 3) i").unwrap();
    let mut first = db.connect();
    first.batch_execute("BEGIN").unwrap();
    assert_eq!(merge(&mut first, r#"{"mode": "full"}"#)["inserted"], 3);
    let conninfo = db.conninfo.clone();
    let second = std::thread::spawn(move || {
        let mut client = Client::connect(&conninfo, postgres::NoTls).unwrap();
        merge(&mut client, r#"{"mode": "full"}"#)
    });
    wait_for("the second merge to wait for the first", std::time::Duration::from_secs(10), || {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND classid = (x'464C584D'::integer)::oid",
                &[],
            )
            .unwrap()
            .get(0);
        waiting == 1
    });
    first.batch_execute("COMMIT").unwrap();
    let after = second.join().unwrap();
    assert_eq!((after["inserted"].as_i64(), after["unchanged"].as_i64()), (Some(0), Some(3)), "it saw the first one's rows: {after}");
}
