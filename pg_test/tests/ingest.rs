//! The idempotent ingest against a real server: parents before children whatever the batch's
//! order, parents from earlier batches, a replay answered from the record, one permanent error
//! among ten, two devices meeting on one natural key, a backend killed mid-batch, the device's own
//! rights, and the inbox's workers (two at once, a dead worker's lease taken over, a stale worker
//! fenced out, backoff and dead batches).

use flex_sync_pg_test::harness::*;
use postgres::{Client, NoTls};
use serde_json::{json, Value};
use std::sync::Once;
use std::time::Duration;

/// The roles of the inbox's tests, made once per server: a device's role (`ingest_tablet`) and
/// the worker's (`ingest_worker`, which logs in and may take on the device's role, and is no
/// superuser, as the worker must not be).
fn roles() {
    static ROLES: Once = Once::new();
    ROLES.call_once(|| {
        Client::connect(&server_conninfo(), NoTls)
            .unwrap()
            .batch_execute(
                "DO $$ BEGIN CREATE ROLE ingest_tablet NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                 DO $$ BEGIN CREATE ROLE ingest_worker LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                 GRANT ingest_tablet TO ingest_worker;",
            )
            .unwrap();
    });
}

/// A connection as the inbox's worker.
fn worker(db: &TestDb) -> Client {
    Client::connect(&worker_conninfo(db), NoTls).unwrap()
}

fn worker_conninfo(db: &TestDb) -> String {
    db.conninfo.replace("user=postgres", "user=ingest_worker")
}

/// The seed's device tables: customers and products, sales of a customer, swaps of a sale and a
/// product (one server row per swap number and per IMEI, whoever creates it).
fn setup(test: &str) -> (TestDb, Client) {
    roles();
    let db = TestDb::empty(test);
    let mut client = db.connect();
    client
        .batch_execute(
            "CREATE EXTENSION flex_sync;
             CREATE TABLE customers (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL);
             CREATE TABLE products (id uuid PRIMARY KEY, imei text NOT NULL UNIQUE, model text);
             CREATE TABLE sales (id uuid PRIMARY KEY, customer_id uuid REFERENCES customers,
                                 total numeric NOT NULL CHECK (total >= 0));
             CREATE TABLE swaps (id uuid PRIMARY KEY, sale_id uuid REFERENCES sales, product_id uuid REFERENCES products,
                                 swap_number text NOT NULL UNIQUE, note text);
             SELECT flex_sync_ingest_register('customers');
             SELECT flex_sync_ingest_register('products', ARRAY['imei']);
             SELECT flex_sync_ingest_register('sales');
             SELECT flex_sync_ingest_register('swaps', ARRAY['swap_number']);
             SELECT flex_sync_ingest_grant('ingest_tablet');
             SELECT flex_sync_ingest_grant('ingest_worker', worker => true);
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ingest_tablet;",
        )
        .unwrap();
    (db, client)
}

fn upsert(op: &str, table: &str, local: &str, data: Value) -> Value {
    json!({"op_id": op, "table": table, "local_id": local, "action": "upsert", "data": data})
}

fn ingest(client: &mut Client, device: &str, batch: &Value) -> Value {
    try_ingest(client, device, batch).unwrap()
}

fn try_ingest(client: &mut Client, device: &str, batch: &Value) -> Result<Value, postgres::Error> {
    let text: String = client
        .query_one("SELECT flex_sync_ingest($1, $2::text::jsonb)::text", &[&device, &batch.to_string()])?
        .get(0);
    Ok(serde_json::from_str(&text).unwrap())
}

fn statuses(result: &Value) -> Vec<String> {
    result["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_string()).collect()
}

fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// Every row of the device tables and of the ingest's records, each with its row version: equal
/// before and after means nothing was written.
fn snapshot(client: &mut Client) -> Vec<String> {
    strings(
        client,
        "SELECT 'c ' || id || ' ' || xmin FROM customers UNION ALL SELECT 'p ' || id || ' ' || xmin FROM products
         UNION ALL SELECT 's ' || id || ' ' || xmin FROM sales UNION ALL SELECT 'w ' || id || ' ' || xmin FROM swaps
         UNION ALL SELECT 'm ' || device_id || table_name || local_id || ' ' || xmin FROM flex_sync_private.ingest_id_map
         UNION ALL SELECT 'o ' || device_id || op_id || ' ' || xmin FROM flex_sync_private.ingest_operations
         ORDER BY 1",
        &[],
    )
}

/// A sale of a new customer with a swap of a new product, children listed first.
fn children_first(prefix: &str) -> Value {
    json!([
        upsert(&format!("{prefix}-1"), "swaps", &format!("{prefix}-w"),
               json!({"sale_id": format!("{prefix}-s"), "product_id": format!("{prefix}-p"), "swap_number": format!("SW-{prefix}")})),
        upsert(&format!("{prefix}-2"), "sales", &format!("{prefix}-s"), json!({"customer_id": format!("{prefix}-c"), "total": 120})),
        upsert(&format!("{prefix}-3"), "products", &format!("{prefix}-p"), json!({"imei": format!("IMEI-{prefix}"), "model": "X1"})),
        upsert(&format!("{prefix}-4"), "customers", &format!("{prefix}-c"), json!({"name": "Ann"})),
    ])
}

/// The swaps whose sale, product and customer are the rows the device named: one line per swap.
fn linked_swaps(client: &mut Client) -> Vec<String> {
    strings(
        client,
        "SELECT w.swap_number || ' ' || p.imei || ' ' || c.name || ' ' || s.total
         FROM swaps w JOIN sales s ON s.id = w.sale_id JOIN products p ON p.id = w.product_id
         JOIN customers c ON c.id = s.customer_id ORDER BY 1",
        &[],
    )
}

#[test]
fn children_listed_before_their_parents_and_children_of_earlier_batches_get_their_parents_server_ids() {
    let (_db, mut client) = setup("ingest_order");
    let first = ingest(&mut client, "dev1", &children_first("a"));
    assert_eq!(statuses(&first), vec!["applied"; 4], "{first}");
    assert_eq!(linked_swaps(&mut client), vec!["SW-a IMEI-a Ann 120"]);
    let map = &first["id_map"];
    let sale: String = client.query_one("SELECT id::text FROM sales", &[]).unwrap().get(0);
    assert_eq!(map["sales:a-s"], json!(sale));
    assert_eq!(first["results"][1]["server_id"], json!(sale), "results are in the batch's order");

    // A later batch names the customer of the first: the id map persists between batches.
    let later = json!([upsert("b-1", "sales", "b-s", json!({"customer_id": "a-c", "total": 5}))]);
    let second = ingest(&mut client, "dev1", &later);
    assert_eq!(statuses(&second), vec!["applied"], "{second}");
    assert_eq!(count(&mut client, "SELECT count(*) FROM sales WHERE customer_id = (SELECT id FROM customers)"), 2);
    // An upsert of a mapped row sends only what changed: the rest of the row stays (the NOT NULL
    // total is not sent again).
    let changed = ingest(&mut client, "dev1", &json!([upsert("b-2", "swaps", "a-w", json!({"note": "cracked screen"}))]));
    assert_eq!(changed["results"][0]["server_id"], first["results"][0]["server_id"], "{changed}");
    assert_eq!(strings(&mut client, "SELECT note || ' ' || swap_number FROM swaps", &[]), vec!["cracked screen SW-a"]);

    // A parent the device has not sent yet: the child fails, a retry can help, and nothing of it
    // is kept, so the same operation applies once the parent has come.
    let orphan = json!([upsert("c-1", "sales", "c-s", json!({"customer_id": "c-c", "total": 1}))]);
    let waiting = ingest(&mut client, "dev1", &orphan);
    assert_eq!(waiting["results"][0]["status"], "failed");
    assert_eq!(waiting["results"][0]["retryable"], true, "{waiting}");
    assert!(waiting["results"][0]["error"].as_str().unwrap().starts_with("FS001"), "{waiting}");
    ingest(&mut client, "dev1", &json!([upsert("c-2", "customers", "c-c", json!({"name": "Cy"}))]));
    assert_eq!(statuses(&ingest(&mut client, "dev1", &orphan)), vec!["applied"]);
    // Another device's local id of the same name is another row: maps are per device.
    let other = ingest(&mut client, "dev2", &json!([upsert("1", "sales", "x", json!({"customer_id": "a-c", "total": 1}))]));
    assert_eq!(other["results"][0]["retryable"], true, "dev2 never sent a-c: {other}");
}

#[test]
fn a_replayed_batch_is_answered_from_the_record_and_one_permanent_error_of_ten_loses_nothing_else() {
    let (_db, mut client) = setup("ingest_replay");
    let mut ops: Vec<Value> = (0..10)
        .map(|i| upsert(&format!("op{i}"), "customers", &format!("c{i}"), json!({"name": format!("customer {i}")})))
        .collect();
    ops[6] = upsert("op6", "customers", "c6", json!({"name": null}));
    let batch = Value::Array(ops);
    let first = ingest(&mut client, "dev1", &batch);
    let mut expected = vec!["applied"; 10];
    expected[6] = "failed";
    assert_eq!(statuses(&first), expected, "{first}");
    assert_eq!(first["results"][6]["retryable"], false);
    assert!(first["results"][6]["error"].as_str().unwrap().starts_with("23502"), "{first}");
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers"), 9);
    assert_eq!(first["id_map"].as_object().unwrap().len(), 9);

    let before = snapshot(&mut client);
    for _ in 0..2 {
        let replay = ingest(&mut client, "dev1", &batch);
        expected = vec!["replayed"; 10];
        expected[6] = "failed";
        assert_eq!(statuses(&replay), expected, "{replay}");
        assert_eq!(replay["id_map"], first["id_map"]);
        assert_eq!(replay["results"][6], first["results"][6], "a permanent failure is answered the same way");
        for i in 0..10 {
            assert_eq!(replay["results"][i]["server_id"], first["results"][i]["server_id"]);
        }
    }
    assert_eq!(snapshot(&mut client), before, "replays write nothing");
    // A new operation on a mapped row updates that row.
    let update = ingest(&mut client, "dev1", &json!([upsert("op10", "customers", "c3", json!({"name": "renamed"}))]));
    assert_eq!(update["results"][0]["server_id"], first["results"][3]["server_id"]);
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers WHERE name = 'renamed'"), 1);
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers"), 9);
    // A delete removes the mapped row; replayed, it deletes nothing more.
    let delete = json!([{"op_id": "op11", "table": "customers", "local_id": "c3", "action": "delete"}]);
    assert_eq!(statuses(&ingest(&mut client, "dev1", &delete)), vec!["applied"]);
    assert_eq!(statuses(&ingest(&mut client, "dev1", &delete)), vec!["replayed"]);
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers"), 8);
}

#[test]
fn operations_that_cannot_apply_fail_alone_with_their_reason() {
    let (_db, mut client) = setup("ingest_bad_ops");
    let batch = json!([
        upsert("1", "invoices", "i1", json!({})),
        {"op_id": "2", "table": "customers", "local_id": "c1", "action": "merge", "data": {}},
        upsert("3", "customers", "c1", json!({"name": "Ann", "colour": "red"})),
        upsert("4", "customers", "c2", json!({"name": "Bo", "id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"})),
        upsert("5", "sales", "s1", json!({"total": "lots"})),
        upsert("6", "customers", "c3", json!({"name": "Cy"})),
        upsert("7", "sales", "s2", json!({"customer_id": 3.5, "total": 1})),
    ]);
    let result = ingest(&mut client, "dev1", &batch);
    assert_eq!(statuses(&result), vec!["failed", "failed", "failed", "failed", "failed", "applied", "failed"], "{result}");
    let failed: Vec<&Value> = result["results"].as_array().unwrap().iter().filter(|r| r["status"] == "failed").collect();
    let codes: Vec<&str> = failed.iter().map(|r| &r["error"].as_str().unwrap()[..5]).collect();
    assert_eq!(codes, vec!["22023", "22023", "42703", "42703", "22P02", "22023"]);
    assert!(failed.iter().all(|r| r["retryable"] == false));
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers"), 1);

    // A foreign key that could never name a local id fails for good; a row that names itself is
    // its own parent; a mapped row deleted on the server is not made again from part of it.
    client
        .batch_execute(
            "CREATE TABLE categories (id uuid PRIMARY KEY, parent_id uuid REFERENCES categories, name text UNIQUE);
             SELECT flex_sync_ingest_register('categories', ARRAY['name']);",
        )
        .unwrap();
    let more = ingest(
        &mut client,
        "dev1",
        &json!([
            upsert("8", "sales", "s3", json!({"customer_id": "", "total": 1})),
            upsert("9", "categories", "root", json!({"parent_id": "root", "name": "all"})),
        ]),
    );
    assert_eq!(more["results"][0]["retryable"], false, "{more}");
    assert!(more["results"][0]["error"].as_str().unwrap().starts_with("22023"), "{more}");
    assert_eq!(more["results"][1]["status"], "applied", "{more}");
    assert_eq!(count(&mut client, "SELECT count(*) FROM categories WHERE parent_id = id"), 1);
    // Another device's root meets the same row by its name, and stays its own parent.
    let other = ingest(&mut client, "dev2", &json!([upsert("1", "categories", "top", json!({"parent_id": "top", "name": "all"}))]));
    assert_eq!(other["results"][0]["server_id"], more["results"][1]["server_id"], "{other}");
    assert_eq!(count(&mut client, "SELECT count(*) FROM categories WHERE parent_id = id"), 1);
    // A deferred foreign key is checked where its operation stands: it fails alone, the batch
    // commits.
    client
        .batch_execute(
            "CREATE TABLE notes (id uuid PRIMARY KEY, customer_id uuid REFERENCES customers DEFERRABLE INITIALLY DEFERRED, body text);
             SELECT flex_sync_ingest_register('notes');",
        )
        .unwrap();
    client.batch_execute("DELETE FROM customers").unwrap();
    let deferred = ingest(
        &mut client,
        "dev1",
        &json!([upsert("11", "notes", "n1", json!({"customer_id": "c3", "body": "for a customer deleted on the server"})),
                upsert("12", "notes", "n2", json!({"body": "for no one"}))]),
    );
    assert!(deferred["results"][0]["error"].as_str().unwrap().starts_with("23503"), "{deferred}");
    assert_eq!(deferred["results"][1]["status"], "applied", "{deferred}");
    assert_eq!(strings(&mut client, "SELECT body FROM notes", &[]), vec!["for no one"]);
    let gone = ingest(&mut client, "dev1", &json!([upsert("10", "customers", "c3", json!({"name": "Cy again"}))]));
    assert_eq!(gone["results"][0]["retryable"], false, "{gone}");
    assert!(gone["results"][0]["error"].as_str().unwrap().starts_with("P0002"), "{gone}");
    client.batch_execute("INSERT INTO customers (name) VALUES ('Cy')").unwrap();

    // A batch that is not one is refused whole, and nothing is recorded.
    for (bad, code) in [
        (json!({"op_id": "1"}), "22023"),
        (json!([upsert("1", "customers", "c9", json!({"name": "x"})), upsert("1", "customers", "c8", json!({"name": "y"}))]), "22023"),
        (json!([{"table": "customers"}]), "22023"),
    ] {
        let error = try_ingest(&mut client, "dev1", &bad).unwrap_err();
        assert_eq!(error.code().unwrap().code(), code, "{bad}");
    }
    let null_device = client.query_one("SELECT flex_sync_ingest(NULL, '[]')", &[]).unwrap_err();
    assert_eq!(null_device.code().unwrap().code(), "22004");
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers"), 1);
    assert_eq!(count(&mut client, "SELECT count(*) FROM flex_sync_private.ingest_operations"), 13);
}

#[test]
fn two_devices_creating_one_natural_key_meet_one_row_even_at_the_same_moment() {
    let (db, mut client) = setup("ingest_natural_key");
    let first = ingest(&mut client, "tablet", &json!([upsert("1", "products", "t-p", json!({"imei": "356938035643809", "model": "A"}))]));
    let second = ingest(&mut client, "phone", &json!([upsert("9", "products", "ph-p", json!({"imei": "356938035643809", "model": "B"}))]));
    assert_eq!(first["results"][0]["server_id"], second["results"][0]["server_id"]);
    assert_eq!(strings(&mut client, "SELECT model FROM products", &[]), vec!["B"]);

    // At the same moment: the tablet's insert is not committed when the phone's arrives.
    client.batch_execute("BEGIN").unwrap();
    let tablet = ingest(&mut client, "tablet", &json!([upsert("2", "swaps", "t-w", json!({"swap_number": "SW-7", "note": "tablet"}))]));
    let conninfo = db.conninfo.clone();
    let phone = std::thread::spawn(move || {
        let mut phone = Client::connect(&conninfo, NoTls).unwrap();
        ingest(&mut phone, "phone", &json!([upsert("10", "swaps", "ph-w", json!({"swap_number": "SW-7", "note": "phone"}))]))
    });
    let mut watcher = db.connect();
    wait_for("the phone's ingest to wait for the tablet's", Duration::from_secs(30), || {
        count(&mut watcher, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                             AND wait_event_type = 'Lock' AND query LIKE '%flex_sync_ingest%'") == 1
    });
    client.batch_execute("COMMIT").unwrap();
    let phone = phone.join().unwrap();
    assert_eq!(phone["results"][0]["status"], "applied", "{phone}");
    assert_eq!(phone["results"][0]["server_id"], tablet["results"][0]["server_id"]);
    assert_eq!(strings(&mut client, "SELECT note FROM swaps", &[]), vec!["phone"]);
    let maps = strings(
        &mut client,
        "SELECT device_id || ' ' || local_id FROM flex_sync_private.ingest_id_map m JOIN swaps s ON s.id = m.server_id ORDER BY 1",
        &[],
    );
    assert_eq!(maps, vec!["phone ph-w", "tablet t-w"], "both maps point at the one row");
}

/// Holds `LOCK TABLE table` in a transaction of its own until dropped.
fn hold_lock(db: &TestDb, table: &str) -> Client {
    let mut holder = db.connect();
    holder.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).unwrap();
    holder
}

/// Backends of this database that wait for a lock while running a statement like `pattern`.
fn waiting(client: &mut Client, pattern: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
             AND query LIKE $1",
            &[&pattern],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_backend_killed_in_the_middle_of_a_batch_leaves_nothing_and_the_replay_applies_it_once() {
    let (db, mut client) = setup("ingest_killed");
    let batch = children_first("k");
    let holder = hold_lock(&db, "swaps");
    let conninfo = db.conninfo.clone();
    let victim_batch = batch.clone();
    let victim = std::thread::spawn(move || {
        let mut device = Client::connect(&conninfo, NoTls).unwrap();
        try_ingest(&mut device, "dev1", &victim_batch)
    });
    // The parents are in (uncommitted) when the swap, applied last, waits for the lock.
    wait_for("the batch to reach the swap", Duration::from_secs(30), || !waiting(&mut client, "%flex_sync_ingest%").is_empty());
    let pid = waiting(&mut client, "%flex_sync_ingest%")[0];
    let killed: bool = client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap().get(0);
    assert!(killed);
    assert!(victim.join().unwrap().is_err(), "the killed batch fails");
    drop(holder);
    assert_eq!(snapshot(&mut client), Vec::<String>::new(), "nothing of the killed batch was kept");

    let replay = ingest(&mut client, "dev1", &batch);
    assert_eq!(statuses(&replay), vec!["applied"; 4], "{replay}");
    let again = ingest(&mut client, "dev1", &batch);
    assert_eq!(statuses(&again), vec!["replayed"; 4]);
    assert_eq!(again["id_map"], replay["id_map"]);
    assert_eq!(linked_swaps(&mut client), vec!["SW-k IMEI-k Ann 120"]);
    for table in ["customers", "products", "sales", "swaps"] {
        assert_eq!(count(&mut client, &format!("SELECT count(*) FROM {table}")), 1, "{table}");
    }
    let mapped = count(
        &mut client,
        "SELECT count(*) FROM flex_sync_private.ingest_id_map m
         WHERE m.server_id IN (SELECT id FROM customers UNION ALL SELECT id FROM products
                               UNION ALL SELECT id FROM sales UNION ALL SELECT id FROM swaps)",
    );
    assert_eq!(mapped, 4, "every mapping points at a row");
}

#[test]
fn the_callers_privileges_and_row_level_security_decide_what_a_device_may_change_and_a_device_is_its_first_users() {
    let (db, mut client) = setup("ingest_rights");
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE ingest_device_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             SELECT flex_sync_ingest_grant('ingest_device_role');
             GRANT SELECT, INSERT, UPDATE ON customers TO ingest_device_role;
             ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
             CREATE POLICY only_named ON customers TO ingest_device_role USING (true) WITH CHECK (name <> 'forbidden');",
        )
        .unwrap();
    let mut device = db.connect();
    device.batch_execute("SET ROLE ingest_device_role").unwrap();
    let result = ingest(
        &mut device,
        "dev1",
        &json!([
            upsert("1", "customers", "c1", json!({"name": "Ann"})),
            upsert("2", "customers", "c2", json!({"name": "forbidden"})),
            upsert("3", "products", "p1", json!({"imei": "1"})),
        ]),
    );
    assert_eq!(statuses(&result), vec!["applied", "failed", "failed"], "{result}");
    for failed in [1, 2] {
        assert!(result["results"][failed]["error"].as_str().unwrap().starts_with("42501"), "{result}");
        assert_eq!(result["results"][failed]["retryable"], false);
    }
    assert_eq!(strings(&mut client, "SELECT name FROM customers", &[]), vec!["Ann"]);
    assert_eq!(count(&mut client, "SELECT count(*) FROM products"), 0);
    // The records are reachable only through the ingest's own helpers.
    for sql in ["SELECT * FROM flex_sync_private.ingest_id_map", "DELETE FROM flex_sync_private.ingest_operations"] {
        let error = device.batch_execute(sql).unwrap_err();
        assert_eq!(error.code().unwrap().code(), "42501", "{sql}");
    }
    // A device id belongs to the first user that sent it: another signed-in user is refused it
    // (and gets nothing of its record); the owner may act for any device.
    let batch = json!([upsert("u1", "customers", "cu", json!({"name": "Una"}))]).to_string();
    let call = format!("SELECT flex_sync_ingest('tablet-9', '{batch}')::text");
    let first = postgrest(&mut client, "ingest_device_role", &json!({"sub": "user-a"}), None, &call);
    assert!(first.unwrap().unwrap().contains("\"applied\""));
    let thief = postgrest(&mut client, "ingest_device_role", &json!({"sub": "user-b"}), None, &call);
    assert_eq!(thief, Err("42501".to_string()));
    for helper in [
        "SELECT flex_sync_private.ingest_claim('tablet-9', 'u2', 'customers', 'cu', '{}')::text",
        "SELECT flex_sync_private.ingest_record('tablet-9', 'u1', 'customers', 'cu', gen_random_uuid(), '{}')::text",
        "SELECT flex_sync_ingest_result('tablet-9', 1)::text",
    ] {
        let direct = postgrest(&mut client, "ingest_device_role", &json!({"sub": "user-b"}), None, helper);
        assert_eq!(direct, Err("42501".to_string()), "{helper}");
    }
    let again = postgrest(&mut client, "ingest_device_role", &json!({"sub": "user-a"}), None, &call);
    assert!(again.unwrap().unwrap().contains("\"replayed\""));
    assert_eq!(statuses(&ingest(&mut client, "tablet-9", &serde_json::from_str(&batch).unwrap())), vec!["replayed"]);
    // A batch left in the inbox is applied with its submitter's rights, not the worker's.
    let submit_call = format!(
        "SELECT flex_sync_ingest_submit('tablet-9', '{}')::text",
        json!([upsert("u3", "products", "p9", json!({"imei": "9"})), upsert("u4", "customers", "cz", json!({"name": "Zoe"}))])
    );
    let inbox_id = postgrest(&mut client, "ingest_device_role", &json!({"sub": "user-a"}), None, &submit_call).unwrap().unwrap();
    client.batch_execute("GRANT ingest_device_role TO ingest_worker").unwrap();
    assert_eq!(work(&mut worker(&db), "")["done"], 1);
    let applied = strings(
        &mut client,
        "SELECT r ->> 'status' || ' ' || coalesce(left(r ->> 'error', 5), '') FROM flex_sync_ingest_inbox,
                jsonb_array_elements(result -> 'results') r WHERE id = $1::text::bigint",
        &[&inbox_id],
    );
    assert_eq!(applied, vec!["failed 42501", "applied "]);
    assert_eq!(count(&mut client, "SELECT count(*) FROM products"), 0, "the worker's rights were not lent");
    // Without the grants the README lists, nothing: PUBLIC may not call it.
    client
        .batch_execute("DO $$ BEGIN CREATE ROLE ingest_stranger NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .unwrap();
    let mut stranger = db.connect();
    stranger.batch_execute("SET ROLE ingest_stranger").unwrap();
    let refused = try_ingest(&mut stranger, "dev1", &json!([])).unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "42501");
}

/// Submits as the device's role, `ingest_tablet`.
fn submit(client: &mut Client, device: &str, batch: &Value) -> i64 {
    client.batch_execute("SET ROLE ingest_tablet").unwrap();
    let id = client
        .query_one("SELECT flex_sync_ingest_submit($1, $2::text::jsonb)", &[&device, &batch.to_string()])
        .unwrap()
        .get(0);
    client.batch_execute("RESET ROLE").unwrap();
    id
}

fn work(client: &mut Client, args: &str) -> Value {
    call_for_report(client, &format!("CALL flex_sync_ingest_work({args})"))
}

fn work_in_background(conninfo: &str, args: &str) -> std::thread::JoinHandle<Value> {
    let (conninfo, args) = (conninfo.to_string(), args.to_string());
    std::thread::spawn(move || work(&mut Client::connect(&conninfo, NoTls).unwrap(), &args))
}

fn inbox(client: &mut Client, id: i64) -> (String, i32, i64) {
    let row = client.query_one("SELECT state, attempts, fence FROM flex_sync_ingest_inbox WHERE id = $1", &[&id]).unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn two_workers_on_one_inbox_each_apply_a_batch_once_and_pass_over_what_the_other_leased() {
    let (db, mut client) = setup("ingest_two_workers");
    let ids: Vec<i64> = (0..12).map(|i| submit(&mut client, &format!("dev{}", i % 3), &children_first(&format!("b{i}")))).collect();
    // The first worker's first batch waits for a product row another transaction is inserting;
    // meanwhile a second worker drains what it may.
    let mut holder = db.connect();
    holder.batch_execute("BEGIN; INSERT INTO products (id, imei) VALUES (gen_random_uuid(), 'IMEI-b0')").unwrap();
    let first = work_in_background(&worker_conninfo(&db), "max_batches => 1");
    wait_for("the first worker to wait inside its batch", Duration::from_secs(30), || {
        !waiting(&mut client, "%flex_sync_ingest_work%").is_empty()
    });
    let mut second_client = worker(&db);
    let second = work(&mut second_client, "");
    // dev0's later batches wait for its first: a device's batches apply in order.
    assert_eq!(second, json!({"done": 8, "queued": 0, "dead": 0, "lost": 0}));
    let waited = strings(&mut client, "SELECT i.id::text FROM flex_sync_ingest_inbox i WHERE state = 'queued' AND fence = 0 ORDER BY i.id", &[]);
    let dev0_later: Vec<String> = ids.iter().skip(3).step_by(3).map(|id| id.to_string()).collect();
    assert_eq!(waited, dev0_later);
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(first.join().unwrap(), json!({"done": 1, "queued": 0, "dead": 0, "lost": 0}));
    assert_eq!(work(&mut second_client, "")["done"], 3);
    for &id in &ids {
        assert_eq!(inbox(&mut client, id), ("done".to_string(), 1, 1), "batch {id} was leased once");
    }
    assert_eq!(linked_swaps(&mut client).len(), 12);
    assert_eq!(count(&mut client, "SELECT count(*) FROM flex_sync_private.ingest_operations"), 48);
    let result: String =
        client.query_one("SELECT flex_sync_ingest_result('dev0', $1)::text", &[&ids[0]]).unwrap().get(0);
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(statuses(&result["result"]), vec!["applied"; 4], "{result}");
    let other_device = client.query_one("SELECT flex_sync_ingest_result('dev1', $1)::text", &[&ids[0]]).unwrap();
    assert_eq!(other_device.get::<_, Option<String>>(0), None, "a device sees its own batches only");
}

#[test]
fn a_dead_workers_lease_is_taken_over_when_it_runs_out_and_a_stale_worker_is_fenced_out() {
    let (db, mut client) = setup("ingest_lease");
    let id = submit(&mut client, "dev1", &children_first("l"));

    // A worker dies inside the batch: its lease is left, and honoured until it runs out.
    let holder = hold_lock(&db, "swaps");
    let victim = work_in_background(&worker_conninfo(&db), "lease_seconds => 300");
    wait_for("the worker to wait inside the batch", Duration::from_secs(30), || !waiting(&mut client, "%flex_sync_ingest_work%").is_empty());
    let pid = waiting(&mut client, "%flex_sync_ingest_work%")[0];
    client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    assert!(victim.join().is_err(), "the killed worker's CALL fails");
    drop(holder);
    assert_eq!(inbox(&mut client, id), ("leased".to_string(), 1, 1));
    let mut other = worker(&db);
    assert_eq!(work(&mut other, "")["done"], 0, "a lease that has not run out is passed over");
    client.batch_execute("UPDATE flex_sync_private.ingest_inbox SET due_at = now() - interval '1 second'").unwrap();
    assert_eq!(work(&mut other, "")["done"], 1, "the lease ran out: taken over");
    assert_eq!(inbox(&mut client, id), ("done".to_string(), 2, 2));
    assert_eq!(linked_swaps(&mut client), vec!["SW-l IMEI-l Ann 120"]);

    // A worker too slow for its lease: the batch is taken over while it still runs, and the slow
    // worker's work is rolled back when it tries to settle.
    let id = submit(&mut client, "dev1", &children_first("m"));
    let holder = hold_lock(&db, "swaps");
    let slow = work_in_background(&worker_conninfo(&db), "lease_seconds => 300");
    wait_for("the slow worker to wait inside the batch", Duration::from_secs(30), || !waiting(&mut client, "%flex_sync_ingest_work%").is_empty());
    client.batch_execute(&format!("UPDATE flex_sync_private.ingest_inbox SET due_at = now() WHERE id = {id}")).unwrap();
    let fast = work_in_background(&worker_conninfo(&db), "lease_seconds => 300");
    wait_for("the second worker to lease the batch and wait for the first's operations", Duration::from_secs(30), || {
        waiting(&mut client, "%flex_sync_ingest_work%").len() == 2
    });
    assert_eq!(inbox(&mut client, id).2, 2, "the second worker holds the lease now");
    drop(holder);
    let (slow, fast) = (slow.join().unwrap(), fast.join().unwrap());
    assert_eq!(slow["lost"], 1, "{slow}");
    assert_eq!(fast["done"], 1, "{fast}");
    assert_eq!(inbox(&mut client, id), ("done".to_string(), 2, 2));
    assert_eq!(linked_swaps(&mut client), vec!["SW-l IMEI-l Ann 120", "SW-m IMEI-m Ann 120"]);
    let applied: Vec<String> = strings(
        &mut client,
        "SELECT r ->> 'status' FROM flex_sync_ingest_inbox, jsonb_array_elements(result -> 'results') r WHERE id = $1",
        &[&id],
    );
    assert_eq!(applied, vec!["applied"; 4], "the batch was applied by the worker that kept the lease, once");
}

#[test]
fn a_retryable_failure_backs_off_a_batch_until_it_applies_or_dies_in_view() {
    let (db, mut client) = setup("ingest_backoff");
    let mut worker = worker(&db);
    let child = submit(&mut client, "dev1", &json!([upsert("1", "sales", "s1", json!({"customer_id": "c1", "total": 3}))]));
    assert_eq!(work(&mut worker, ""), json!({"done": 0, "queued": 1, "dead": 0, "lost": 0}));
    let row = client
        .query_one(
            "SELECT state, due_at >= submitted_at + interval '2.5 seconds', last_error LIKE 'FS001%' FROM flex_sync_ingest_inbox WHERE id = $1",
            &[&child],
        )
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1), row.get::<_, bool>(2)), ("queued".into(), true, true));
    // The device's next batch waits behind it, even once due: its batches apply in order.
    let next = submit(&mut client, "dev1", &json!([upsert("2", "customers", "c2", json!({"name": "Bo"}))]));
    assert_eq!(work(&mut worker, "")["done"], 0);
    assert_eq!(inbox(&mut client, next), ("queued".to_string(), 0, 0));
    // The parent comes another way (the device sent it directly); once the pause is over (the
    // clock moved on), the child applies, then the batch behind it.
    ingest(&mut client, "dev1", &json!([upsert("3", "customers", "c1", json!({"name": "Ann"}))]));
    client.batch_execute(&format!("UPDATE flex_sync_private.ingest_inbox SET due_at = now() WHERE id = {child}")).unwrap();
    assert_eq!(work(&mut worker, "")["done"], 2);
    assert_eq!(inbox(&mut client, child), ("done".to_string(), 2, 2));
    assert_eq!(inbox(&mut client, next), ("done".to_string(), 1, 1));
    assert_eq!(count(&mut client, "SELECT count(*) FROM sales WHERE customer_id IS NOT NULL"), 1);

    // One that never gets its parent dies after max_attempts, visible, and can be sent again.
    let doomed = submit(&mut client, "dev1", &json!([upsert("4", "sales", "s2", json!({"customer_id": "c-never", "total": 3}))]));
    assert_eq!(work(&mut worker, "max_attempts => 1")["dead"], 1);
    let dead = strings(&mut client, "SELECT id || ' ' || left(last_error, 5) FROM flex_sync_ingest_dead", &[]);
    assert_eq!(dead, vec![format!("{doomed} FS001")]);
    let requeued: i32 = client.query_one("SELECT flex_sync_ingest_requeue($1)", &[&doomed]).unwrap().get(0);
    assert_eq!(requeued, 1);
    assert_eq!(inbox(&mut client, doomed), ("queued".to_string(), 0, 1));
    // Sent again, it runs as its submitter again: still waiting for its parent, not refused.
    assert_eq!(work(&mut worker, "")["queued"], 1);
    let again: String = client.query_one("SELECT last_error FROM flex_sync_ingest_inbox WHERE id = $1", &[&doomed]).unwrap().get(0);
    assert!(again.starts_with("FS001"), "{again}");
}

#[test]
fn the_inbox_refuses_a_batch_it_could_never_apply_and_the_worker_refuses_bad_arguments() {
    let (db, mut client) = setup("ingest_submit");
    let error = client.query_one("SELECT flex_sync_ingest_submit('dev1', '[{\"op_id\": 1}]')", &[]).unwrap_err();
    assert_eq!(error.code().unwrap().code(), "22023");
    assert_eq!(count(&mut client, "SELECT count(*) FROM flex_sync_ingest_inbox"), 0);
    let mut worker = worker(&db);
    let error = worker.batch_execute("CALL flex_sync_ingest_work(max_batches => 0)").unwrap_err();
    assert_eq!(error.code().unwrap().code(), "22023");
    let error = worker.batch_execute("BEGIN; CALL flex_sync_ingest_work(); COMMIT").unwrap_err();
    assert_eq!(error.code().unwrap().code(), "2D000", "a worker commits: not inside a transaction block");
}

/// A batch's code runs as the submitter, and could RESET ROLE to the session's user: the worker
/// may not be a superuser or the owner, and a batch whose code changed its role is rolled back.
#[test]
fn the_worker_is_never_a_superuser_and_a_batch_that_changes_its_role_is_refused() {
    let (db, mut client) = setup("ingest_worker_role");
    let error = client.batch_execute("CALL flex_sync_ingest_work()").unwrap_err();
    assert_eq!(error.code().unwrap().code(), "42501", "the owner, a superuser, may not run the worker");
    client
        .batch_execute(
            "CREATE FUNCTION escape() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RESET ROLE; RETURN NEW; END $$;
             CREATE TRIGGER escape BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION escape();",
        )
        .unwrap();
    let id = submit(&mut client, "dev1", &json!([upsert("1", "products", "p1", json!({"imei": "1"})),
                                                  upsert("2", "customers", "c1", json!({"name": "Ann"}))]));
    assert_eq!(work(&mut worker(&db), "")["done"], 1);
    // Past its RESET ROLE the operation ran as the worker, which is not the device's caller: its
    // record is refused, so the operation is rolled back; the rest of the batch is applied.
    let results = strings(
        &mut client,
        "SELECT r ->> 'status' || ' ' || coalesce(r ->> 'error', '') FROM flex_sync_ingest_inbox, jsonb_array_elements(result -> 'results') r
         WHERE id = $1",
        &[&id],
    );
    assert_eq!(results, vec!["failed 42501: flex_sync: device dev1 belongs to another caller", "applied "]);
    assert_eq!(count(&mut client, "SELECT count(*) FROM products"), 0);
    assert_eq!(count(&mut client, "SELECT count(*) FROM customers"), 1);
}


#[test]
fn workers_started_at_the_same_moment_never_take_one_batch_twice() {
    let (db, mut client) = setup("ingest_many_workers");
    let ids: Vec<i64> = (0..24).map(|i| submit(&mut client, &format!("tab{i}"), &children_first(&format!("s{i}")))).collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (barrier, conninfo) = (barrier.clone(), worker_conninfo(&db));
            std::thread::spawn(move || {
                let mut worker = Client::connect(&conninfo, NoTls).unwrap();
                barrier.wait();
                work(&mut worker, "")
            })
        })
        .collect();
    let done: i64 = workers.into_iter().map(|w| w.join().unwrap()["done"].as_i64().unwrap()).sum();
    assert_eq!(done, 24);
    for &id in &ids {
        assert_eq!(inbox(&mut client, id), ("done".to_string(), 1, 1), "batch {id} was leased once");
    }
    assert_eq!(linked_swaps(&mut client).len(), 24);
}
