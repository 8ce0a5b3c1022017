//! Benchmarks (not tests): Flex calls, wall time, database-side cost, queue drain and dedupe,
//! flex_sync side by side with the Edge Function replica. Run by `pg_test/bench.sh`, which
//! starts the server; writes Markdown to the file named by `FLEX_SYNC_BENCH_OUT`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use flex_sync_pg_test::edge_function::EdgeFunction;
use flex_sync_pg_test::harness::*;
use flex_sync_pg_test::storm::{storm, Engine as StormEngine, Outcome as StormOutcome};
use postgres::{Client, NoTls};
use serde_json::{json, Value};

struct Bench {
    out: String,
}

impl Bench {
    fn line(&mut self, text: &str) {
        println!("{text}");
        self.out.push_str(text);
        self.out.push('\n');
    }
}

/// A rig with limits out of the way: the benchmarks measure speed, not the guards.
fn fresh(test: &str, options: Value) -> (TestDb, Sim, Client) {
    let mut merged = json!({"max_calls_per_sync": 5000, "sync_deadline_ms": 600000, "request_timeout_ms": 60000});
    for (k, v) in options.as_object().unwrap() {
        merged[k] = v.clone();
    }
    let (db, sim, client) = rig(test, merged);
    sim.set_config(json!({"hourly_budget": 100_000_000}));
    (db, sim, client)
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    FlexSync,
    Edge,
}

fn run(engine: Engine, client: &mut Client, sim: &Sim, job: &str) -> Value {
    match engine {
        Engine::FlexSync => sync(client, job),
        Engine::Edge => EdgeFunction::new(&sim.server.base_url(), SIM_TOKEN).sync(client, job, None),
    }
}

/// Calls one department sync makes in each scenario, starting from a converged crew of 10.
fn flex_calls(b: &mut Bench) {
    b.line("\n## 1. Flex calls per department sync\n");
    b.line("Starting from a converged sound crew of 10 technicians without role codes (roles are counted in scenario 5).\n");
    b.line("| scenario | changes | flex_sync calls | Edge Function replica calls |");
    b.line("|---|---|---|---|");
    type Change = fn(&mut Client, &Sim, &Job);
    let scenarios: [(&str, usize, Change); 5] = [
        ("nothing to change", 0, |_, _, _| {}),
        ("1 add", 1, |c, _, j| {
            add_technician(c, &j.id, "sound", "", &format!("b1-{}", &j.id[..8]));
        }),
        ("10 adds", 10, |c, _, j| {
            for i in 0..10 {
                add_technician(c, &j.id, "sound", "", &format!("b10-{i}-{}", &j.id[..8]));
            }
        }),
        ("stale: 1 contact deleted by hand", 1, |_, s, j| {
            let line = s.contacts(&j.elements["sound"])[0].0.clone();
            s.delete_by_hand(&line);
        }),
        ("10 role changes", 10, |c, _, j| {
            c.batch_execute(&format!(
                "UPDATE job_assignments SET sound_role = 'SND-PA-T' WHERE job_id = '{}'",
                j.id
            ))
            .unwrap();
        }),
    ];
    for (name, changes, change) in scenarios {
        let mut counts = Vec::new();
        for engine in [Engine::FlexSync, Engine::Edge] {
            let (_db, sim, mut client) = fresh("bench_calls", json!({}));
            let crew: Vec<(&str, &str)> = (0..10).map(|_| ("sound", "")).collect();
            let job = create_job(&mut client, &["sound"], &crew);
            run(engine, &mut client, &sim, &job.id);
            change(&mut client, &sim, &job);
            sim.reset_calls();
            run(engine, &mut client, &sim, &job.id);
            counts.push(sim.total_calls());
        }
        b.line(&format!("| {name} | {changes} | {} | {} |", counts[0], counts[1]));
    }
    b.line("\nGoal: nothing to change = exactly 1 call, each change one call more. The replica's calls include its");
    b.line("prune listing and its extras scan (up to five listing variants; the ones Flex does not have still count");
    b.line("against the hourly budget). The replica never sends a role change to an existing contact (its hazard), so");
    b.line("its low count there is work it does not do.");
}

/// Wall time with a 50 ms simulator latency for n new technicians, each an add and a role.
fn wall_time(b: &mut Bench) {
    b.line("\n## 2. Wall time of a department sync at 50 ms per Flex call\n");
    b.line("Each new technician needs an add and a role set. Limit with p in flight: (1 + ceil(2n / p)) x 50 ms.\n");
    b.line("| new technicians | p = 8: time | limit | ratio | p = 1: time | speed-up | Edge Function replica |");
    b.line("|---|---|---|---|---|---|---|");
    for n in [10usize, 50, 200] {
        let mut times = Vec::new();
        for (engine, parallel) in [(Engine::FlexSync, 8), (Engine::FlexSync, 1), (Engine::Edge, 1)] {
            let (_db, sim, mut client) = fresh("bench_wall", json!({"max_parallel_requests": parallel}));
            let crew: Vec<(&str, &str)> = (0..n).map(|_| ("sound", "SND-PA-T")).collect();
            let job = create_job(&mut client, &["sound"], &crew);
            sim.set_faults(json!([
                {"endpoint": "list", "kind": "latency", "ms": 50},
                {"endpoint": "add", "kind": "latency", "ms": 50},
                {"endpoint": "role", "kind": "latency", "ms": 50},
                {"endpoint": "delete", "kind": "latency", "ms": 50},
                {"endpoint": "bulk_delete", "kind": "latency", "ms": 50}
            ]));
            let started = Instant::now();
            let result = run(engine, &mut client, &sim, &job.id);
            let elapsed = started.elapsed();
            if engine == Engine::FlexSync {
                assert_eq!(result["summary"]["sound"]["status"], "ok", "{result}");
            }
            times.push(elapsed);
        }
        let limit = Duration::from_millis(50 * (1 + (2 * n).div_ceil(8)) as u64);
        b.line(&format!(
            "| {n} | {:.0} ms | {:.0} ms | {:.2}x | {:.0} ms | {:.1}x | {:.0} ms |",
            ms(times[0]),
            ms(limit),
            ms(times[0]) / ms(limit),
            ms(times[1]),
            ms(times[1]) / ms(times[0]),
            ms(times[2])
        ));
    }
    b.line("\nGoals with p = 8: within 1.15x of the limit, and at least 4x faster than one call at a time.");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Syncs per second and own work of a sync with nothing to change, 4 connections, zero latency.
fn database_cost(b: &mut Bench) {
    b.line("\n## 3. Database-side cost of a sync with nothing to change (zero latency, 4 connections)\n");
    let (db, sim, mut client) = fresh("bench_cost", json!({}));
    let jobs: Vec<Job> = (0..4)
        .map(|_| {
            let crew: Vec<(&str, &str)> = (0..10).map(|_| ("sound", "SND-PA-T")).collect();
            create_job(&mut client, &["sound"], &crew)
        })
        .collect();
    for job in &jobs {
        sync(&mut client, &job.id);
    }
    // Own work from one connection, so that the figure is the sync's and not the scheduler's.
    let mut own = Vec::new();
    let mut call = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let result = sync(&mut client, &jobs[0].id);
        call.push(t.elapsed().as_micros() as u64);
        own.push(result["summary"]["sound"]["own_work_us"].as_u64().unwrap());
    }
    own.sort_unstable();
    call.sort_unstable();
    let p = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    b.line(&format!(
        "- own work per department sync, one connection (lock, reads, plan, writes, log; not the Flex wait): p50 {} us, p95 {} us",
        p(&own, 0.5),
        p(&own, 0.95)
    ));
    b.line(&format!(
        "- the whole call seen by the client, one connection (checks, settings, the listing round trip): p50 {} us, p95 {} us",
        p(&call, 0.5),
        p(&call, 0.95)
    ));
    let per_connection = 500;
    let started = Instant::now();
    let handles: Vec<_> = jobs
        .iter()
        .map(|job| {
            let (conninfo, job_id) = (db.conninfo.clone(), job.id.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&conninfo, NoTls).unwrap();
                for _ in 0..per_connection {
                    sync(&mut c, &job_id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = started.elapsed();
    b.line(&format!(
        "- syncs per second, 4 connections over distinct jobs ({} syncs): {:.0}",
        4 * per_connection,
        (4 * per_connection) as f64 / elapsed.as_secs_f64()
    ));
    b.line(&format!("- Flex calls made: {} (the initial adds and roles, then one listing per sync)", sim.total_calls()));
    b.line("\nGoal: under 0.5 ms of own work per department sync.");
}

/// `n` jobs of one sound technician each, marked dirty by the queue's triggers, with statistics.
fn load_dirty_jobs(client: &mut Client, n: usize) {
    client.batch_execute("SELECT flex_sync_enable_queue()").unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO jobs (id, title) SELECT gen_random_uuid(), 'q' || g FROM generate_series(1, {n}) g;
             INSERT INTO profiles (id, department, flex_resource_id)
               SELECT gen_random_uuid(), 'sound', 'qres-' || g FROM generate_series(1, {n}) g;
             INSERT INTO flex_crew_calls (job_id, department, flex_element_id)
               SELECT id, 'sound', gen_random_uuid() FROM jobs;
             INSERT INTO job_assignments (job_id, technician_id, sound_role, status)
               SELECT j.id, p.id, 'SND-PA-T', 'confirmed'
               FROM (SELECT id, row_number() OVER () r FROM jobs) j
               JOIN (SELECT id, row_number() OVER () r FROM profiles) p USING (r);
             ANALYZE;"
        ))
        .unwrap();
}

/// flex_sync_run_queue over many dirty jobs: throughput and the backend's peak memory.
fn queue_drain(b: &mut Bench) {
    b.line("\n## 4. flex_sync_run_queue draining dirty jobs (zero latency)\n");
    b.line("| dirty jobs | jobs per minute | backend peak RSS (VmHWM, shared buffers included) | peak private memory (RssAnon, sampled per call) |");
    b.line("|---|---|---|---|");
    for n in [1_000usize, 10_000] {
        let (db, _sim, mut setup) = fresh("bench_queue", json!({}));
        load_dirty_jobs(&mut setup, n);
        // A backend of its own, so its peak memory is the drain's alone.
        let mut client = db.connect();
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let started = Instant::now();
        let mut peak_private = 0;
        loop {
            let report = run_queue(&mut client, "");
            peak_private = peak_private.max(status_kib(pid, "RssAnon:"));
            if report["remaining"] == 0 || report["synced"] == 0 {
                break;
            }
        }
        let elapsed = started.elapsed();
        b.line(&format!(
            "| {n} | {:.0} | {} MiB | {} MiB |",
            n as f64 / elapsed.as_secs_f64() * 60.0,
            status_kib(pid, "VmHWM:") / 1024,
            peak_private / 1024
        ));
    }
    b.line("\nDrained by repeated `CALL flex_sync_run_queue()` with its defaults (50 items per run, as pg_cron would),");
    b.line("after ANALYZE of the loaded tables (a live database has statistics; without them the crew query scans");
    b.line("`profiles`). Memory must not grow with the queue.");
}

/// p50, p95 and max of `samples`, in ms.
fn latency_figures(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!("{} | {:.1} | {:.1} | {:.1}", samples.len(), at(0.5), at(0.95), samples[samples.len() - 1])
}

/// Like `latency_figures`, in microseconds: a sync with nothing to change takes well under 1 ms.
fn micro_figures(samples_ms: &mut [f64]) -> String {
    samples_ms.sort_by(f64::total_cmp);
    let mut us: Vec<f64> = samples_ms.iter().map(|ms| (ms * 1000.0).round()).collect();
    let figures = latency_figures(&mut us);
    figures.split(" | ").map(|f| f.trim_end_matches(".0")).collect::<Vec<_>>().join(" | ")
}

/// One interactive sync (a click) of `job`, in ms.
fn click(client: &mut Client, job: &str) -> f64 {
    let started = Instant::now();
    let result = sync(client, job);
    assert_eq!(result["ok"], true, "{result}");
    ms(started.elapsed())
}

/// The job the queue run synced last.
fn last_synced_job(client: &mut Client) -> Option<String> {
    client
        .query_opt("SELECT job_id::text FROM flex_sync_log WHERE triggered_by = 'queue run' ORDER BY id DESC LIMIT 1", &[])
        .unwrap()
        .map(|r| r.get(0))
}

/// An interactive sync of a job the queue run has just done, while the run drains 1,000 dirty
/// jobs at 50 ms of Flex latency per call, against the same sync on an idle database.
fn interactive_during_run(b: &mut Bench) {
    b.line("\n## 6. An interactive sync while a queue run drains 1,000 dirty jobs (50 ms Flex latency)\n");
    b.line("| while | syncs | p50 ms | p95 ms | max ms |");
    b.line("|---|---|---|---|---|");
    let latency: Vec<Value> = ["list", "add", "role", "delete", "bulk_delete", "other"]
        .iter()
        .map(|e| json!({"endpoint": e, "kind": "latency", "ms": 50}))
        .collect();
    let (db, sim, mut setup) = fresh("bench_click", json!({}));
    load_dirty_jobs(&mut setup, 1_000);
    let mut client = db.connect();
    // The idle figure: jobs synced once, then clicked with nothing running.
    let warm = strings(&mut client, "SELECT id::text FROM jobs ORDER BY id LIMIT 20", &[]);
    sim.set_faults(Value::Array(latency));
    for job in &warm {
        sync(&mut client, job);
    }
    let mut idle: Vec<f64> = (0..200).map(|i| click(&mut client, &warm[i % warm.len()])).collect();
    b.line(&format!("| idle database | {} |", latency_figures(&mut idle)));
    let conninfo = db.conninfo.clone();
    let run = std::thread::spawn(move || {
        let mut runner = Client::connect(&format!("{conninfo} application_name=bench_run"), NoTls).unwrap();
        // The log names the caller: tell the run's rows from the clicks'.
        runner.batch_execute("CREATE ROLE \"queue run\" SUPERUSER; SET ROLE \"queue run\"").unwrap();
        run_queue(&mut runner, "max_jobs => 1000, max_seconds => 3600")
    });
    let mut during = Vec::new();
    while !run.is_finished() {
        match last_synced_job(&mut client) {
            Some(job) => during.push(click(&mut client, &job)),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let report = run.join().unwrap();
    b.line(&format!("| queue run, each sync of the job the run did last | {} |", latency_figures(&mut during)));
    b.line(&format!(
        "\nThe run: {} jobs synced in {:.0} s by `CALL flex_sync_run_queue(max_jobs => 1000, max_seconds => 3600)`,",
        report["synced"],
        report["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
    ));
    b.line("committing after each job. Each interactive sync is `flex_sync_job` from a second connection on the job");
    b.line("whose log row the run wrote last (it finds that job's crew converged: one listing). Goal: p95 within");
    b.line("100 ms of the idle database's.");
}

/// A field of a backend's /proc status, in KiB (0 when it cannot be read).
fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Runs `sql` after a checkpoint and returns its wall time and the backend's peak private memory
/// meanwhile, in MiB (RssAnon sampled every 5 ms by another thread).
fn timed_with_peak_memory(client: &mut Client, sql: &str) -> (Duration, u64) {
    // Dirty pages left by the setup or by the method before are written now, not during this one.
    client.batch_execute("CHECKPOINT").unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "RssAnon:"));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let started = Instant::now();
    client.batch_execute(sql).unwrap();
    let elapsed = started.elapsed();
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    (elapsed, sampler.join().unwrap() / 1024)
}

/// The dedupe methods the bench compares, each on its own copy of the same rows.
struct DedupeMethod {
    label: &'static str,
    /// The table it changes; its rows are compared with the oldest of each pair afterwards.
    table: &'static str,
    sql: String,
    audit: &'static str,
    constraint: &'static str,
}

/// The seed checklist's delete: every row of a pair but the oldest, numbered by a window.
fn row_number_delete(table: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE id IN (
           SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY crew_call_id, technician_id
                                                         ORDER BY created_at ASC, id ASC) rn FROM {table}) r
           WHERE rn > 1);"
    )
}

fn dedupe_methods() -> [DedupeMethod; 4] {
    [
        DedupeMethod {
            label: "flex_dedupe_assignments()",
            table: "flex_crew_assignments",
            sql: "SELECT flex_dedupe_assignments()".into(),
            audit: "every removed row",
            constraint: "created",
        },
        DedupeMethod {
            label: "seed checklist: ROW_NUMBER delete",
            table: "copy_rownumber",
            sql: row_number_delete("copy_rownumber"),
            audit: "none",
            constraint: "no",
        },
        DedupeMethod {
            label: "seed checklist: ROW_NUMBER delete, then ADD CONSTRAINT UNIQUE",
            table: "copy_checklist",
            sql: row_number_delete("copy_checklist")
                + "ALTER TABLE copy_checklist ADD CONSTRAINT copy_checklist_key UNIQUE (crew_call_id, technician_id);",
            audit: "none",
            constraint: "added",
        },
        DedupeMethod {
            label: "seed ADR: DELETE ... USING ... a.id < b.id",
            table: "copy_adr",
            sql: "DELETE FROM copy_adr a USING copy_adr b
                  WHERE a.crew_call_id = b.crew_call_id AND a.technician_id = b.technician_id AND a.id < b.id"
                .into(),
            audit: "none",
            constraint: "no",
        },
    ]
}

const DEDUPE_ROUNDS: usize = 5;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Puts the same 1,000,000 rows back into every method's table, each vacuumed (hint bits and
/// visibility map set) and analyzed, so every method starts from the same physical state.
fn reload_dedupe_tables(client: &mut Client, methods: &[DedupeMethod]) {
    client
        .batch_execute(
            "DROP INDEX IF EXISTS flex_crew_assignments_crew_call_id_technician_id_key;
             TRUNCATE flex_crew_assignments, flex_dedupe_audit;
             -- The rows are the ones the foreign keys accepted when bench_source was filled.
             ALTER TABLE flex_crew_assignments DISABLE TRIGGER ALL;
             INSERT INTO flex_crew_assignments SELECT * FROM bench_source;
             ALTER TABLE flex_crew_assignments ENABLE TRIGGER ALL;
             DROP TABLE IF EXISTS copy_rownumber, copy_checklist, copy_adr;
             CREATE TABLE copy_rownumber AS SELECT * FROM bench_source;
             CREATE TABLE copy_checklist AS SELECT * FROM bench_source;
             CREATE TABLE copy_adr AS SELECT * FROM bench_source;",
        )
        .unwrap();
    for table in methods.iter().map(|m| m.table) {
        client.batch_execute(&format!("VACUUM ANALYZE {table}")).unwrap();
    }
}

/// 1,000,000 rows with 100,000 duplicate groups: flex_dedupe_assignments against the seed
/// checklist's ROW_NUMBER delete and the ADR's `a.id < b.id` delete, on identical copies, in
/// several rounds with the order of the methods turned each round, as this shared machine's
/// speed drifts by tens of percent from one minute to the next.
fn dedupe(b: &mut Bench) {
    b.line("\n## 5. Dedupe of 1,000,000 rows with 100,000 duplicate groups\n");
    let (_db, _sim, mut client) = fresh("bench_dedupe", json!({}));
    client
        .batch_execute(
            "ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key;
             INSERT INTO jobs (id) SELECT gen_random_uuid() FROM generate_series(1, 1000);
             INSERT INTO flex_crew_calls (job_id, department, flex_element_id) SELECT id, 'sound', gen_random_uuid() FROM jobs;
             INSERT INTO profiles (id) SELECT gen_random_uuid() FROM generate_series(1, 900);
             INSERT INTO flex_crew_assignments (id, crew_call_id, technician_id, flex_line_item_id, created_at)
               SELECT gen_random_uuid(), c.id, p.id, gen_random_uuid(), now() - random() * interval '300 days'
               FROM flex_crew_calls c CROSS JOIN profiles p;
             INSERT INTO flex_crew_assignments (id, crew_call_id, technician_id, flex_line_item_id, created_at)
               SELECT gen_random_uuid(), crew_call_id, technician_id, gen_random_uuid(), created_at + interval '1 minute'
               FROM flex_crew_assignments TABLESAMPLE BERNOULLI (100) LIMIT 100000;
             CREATE TABLE bench_source AS SELECT * FROM flex_crew_assignments;
             CREATE TABLE oldest AS SELECT DISTINCT ON (crew_call_id, technician_id) id
               FROM bench_source ORDER BY crew_call_id, technician_id, created_at, id;
             CREATE UNIQUE INDEX ON oldest (id);",
        )
        .unwrap();
    let rows: i64 = client.query_one("SELECT count(*) FROM bench_source", &[]).unwrap().get(0);
    let methods = dedupe_methods();
    let mut times = vec![Vec::new(); methods.len()];
    let mut peaks = vec![0; methods.len()];
    let mut wrong = vec![0i64; methods.len()];
    let mut audited = 0i64;
    for round in 0..DEDUPE_ROUNDS {
        reload_dedupe_tables(&mut client, &methods);
        let mut order: Vec<usize> = (0..methods.len()).collect();
        order.rotate_left(round % methods.len());
        for &m in &order {
            let (elapsed, peak) = timed_with_peak_memory(&mut client, &methods[m].sql);
            times[m].push(ms(elapsed));
            peaks[m] = peaks[m].max(peak);
        }
        for (m, method) in methods.iter().enumerate() {
            wrong[m] = wrong[m].max(
                client
                    .query_one(
                        &format!("SELECT count(*) FROM {} t WHERE NOT EXISTS (SELECT 1 FROM oldest o WHERE o.id = t.id)", method.table),
                        &[],
                    )
                    .unwrap()
                    .get(0),
            );
        }
        audited = client.query_one("SELECT count(*) FROM flex_dedupe_audit", &[]).unwrap().get(0);
    }
    b.line(&format!("{rows} rows before. {DEDUPE_ROUNDS} rounds; each method's median, then every round's time.\n"));
    b.line("| method | median | rounds | backend peak private memory | audit copy | unique constraint | groups that kept a row other than the oldest |");
    b.line("|---|---|---|---|---|---|---|");
    for (m, method) in methods.iter().enumerate() {
        let each: Vec<String> = times[m].iter().map(|t| format!("{t:.0}")).collect();
        let audit = if m == 0 { format!("{} ({audited} rows)", method.audit) } else { method.audit.to_string() };
        b.line(&format!(
            "| {} | {:.0} ms | {} | {} MiB | {audit} | {} | {} |",
            method.label,
            median(&times[m]),
            each.join(" / "),
            peaks[m],
            method.constraint,
            wrong[m]
        ));
    }
    let ratios = |other: usize| -> Vec<f64> { times[0].iter().zip(&times[other]).map(|(ours, theirs)| ours / theirs).collect() };
    let describe = |r: &[f64]| {
        let each: Vec<String> = r.iter().map(|x| format!("{x:.2}x")).collect();
        format!("median {:.2}x (rounds: {})", median(r), each.join(", "))
    };
    b.line(&format!(
        "\nflex_dedupe_assignments() against the ROW_NUMBER delete, round by round: {}.",
        describe(&ratios(1))
    ));
    b.line(&format!("Against the ROW_NUMBER delete then ADD CONSTRAINT: {}.", describe(&ratios(2))));
    b.line("\nThe ADR variant keeps the row with the largest uuid, a random row, not the oldest. Goal: flex_dedupe_assignments");
    b.line("within 1.5x of the ROW_NUMBER delete while also auditing every removed row and finding the orphaned Flex");
    b.line("lines; it also builds the unique index, which the checklist's full phase 1 (delete, then add the");
    b.line("constraint) does too. The function is one plain SQL statement and the index build, run with the server's");
    b.line("own planner and memory settings, as the other methods are. Before every round each method's table");
    b.line("is refilled with the same rows, vacuumed and analyzed; the order of the methods turns by one each round.");
    b.line("Each method starts after a CHECKPOINT, so none pays for writing the pages the setup or the method before");
    b.line("dirtied. Peak private memory is the backend's RssAnon sampled every 5 ms, the largest over the rounds (all");
    b.line("run with the default work_mem).");
}

/// The storm, flex_sync against the Edge Function replica with and without the unique constraint.
fn storm_comparison(b: &mut Bench) {
    b.line("\n## 7. The storm: 16 connections churning three jobs for 6 s, then one final sync per job\n");
    let ours = storm(StormEngine::FlexSync, "bench_storm_ours", true);
    let edge = storm(StormEngine::EdgeFunction, "bench_storm_edge", true);
    let edge_old = storm(StormEngine::EdgeFunction, "bench_storm_edge_old", false);
    type Count = fn(&StormOutcome) -> String;
    let rows: [(&str, Count); 6] = [
        ("syncs during the storm", |o| o.syncs.to_string()),
        ("duplicate flex_crew_assignments rows", |o| o.duplicate_rows.to_string()),
        ("duplicate Flex contacts", |o| o.duplicate_contacts.to_string()),
        ("desired technicians missing in Flex", |o| o.missing_crew.to_string()),
        ("contacts in Flex that are not desired", |o| o.extra_contacts.to_string()),
        ("DB rows pointing at no Flex contact", |o| o.rows_not_matching_flex.to_string()),
    ];
    b.line("| after the storm and one final sync per job | flex_sync | Edge Function replica | Edge Function replica, no unique constraint |");
    b.line("|---|---|---|---|");
    for (label, value) in rows {
        b.line(&format!("| {label} | {} | {} | {} |", value(&ours), value(&edge), value(&edge_old)));
    }
}

/// Blocks of 20 calls of each implementation in the comparison with the naive one.
const NAIVE_BLOCKS: usize = 50;

/// The whole call of a sync with nothing to change, flex_sync against a naive PL/Python
/// implementation of the same contract (pg_test/fixtures/naive_sync.sql), one connection, zero
/// latency, the two interleaved.
fn naive_comparison(b: &mut Bench) {
    b.line("\n## 8. A sync with nothing to change: flex_sync against a naive PL/Python implementation\n");
    let (_db, sim, mut client) = fresh("bench_naive", json!({}));
    client.batch_execute(include_str!("../../fixtures/naive_sync.sql")).unwrap();
    let crew: Vec<(&str, &str)> = (0..10).map(|_| ("sound", "SND-PA-T")).collect();
    let job = create_job(&mut client, &["sound"], &crew);
    sync(&mut client, &job.id);
    // Each statement prepared once, as PostgREST and any pooled client do: a call is then one
    // round trip that binds and executes, for both.
    let our_call = client.prepare("SELECT flex_sync_job($1::text::uuid)::text").unwrap();
    let their_call = client.prepare("SELECT naive_flex_sync($1::text::uuid, 'sound', $2, $3)::text").unwrap();
    let base_url = sim.server.base_url();
    let ours_once = |client: &mut Client| -> Value {
        let text: String = client.query_one(&our_call, &[&job.id]).unwrap().get(0);
        serde_json::from_str(&text).unwrap()
    };
    let naive = |client: &mut Client| {
        let text: String = client.query_one(&their_call, &[&job.id, &base_url, &SIM_TOKEN]).unwrap().get(0);
        let result: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(result["summary"]["sound"]["kept"], 10, "{result}");
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        ours_once(&mut client);
        naive(&mut client);
    }
    // Blocks of 20 calls each, alternating; the backend's CPU time (every thread of it: the
    // worker that makes the listing's request too) is read between blocks.
    let (mut our_cpu, mut their_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..NAIVE_BLOCKS {
        let before = backend_cpu(&mut client);
        for _ in 0..20 {
            let t = Instant::now();
            let result = ours_once(&mut client);
            ours.push(ms(t.elapsed()));
            assert_eq!(result["summary"]["sound"]["flex_calls"], 1, "{result}");
            assert_eq!(result["summary"]["sound"]["kept"], 10, "{result}");
        }
        let between = backend_cpu(&mut client);
        for _ in 0..20 {
            let t = Instant::now();
            naive(&mut client);
            theirs.push(ms(t.elapsed()));
        }
        our_cpu += between - before;
        their_cpu += backend_cpu(&mut client) - between;
    }
    let per_call = |cpu: Duration, calls: usize| cpu.as_secs_f64() * 1e6 / calls as f64;
    let (our_us, their_us) = (per_call(our_cpu, ours.len()), per_call(their_cpu, theirs.len()));
    b.line("| implementation | syncs | p50 us | p95 us | max us | backend CPU a call, us |");
    b.line("|---|---|---|---|---|---|");
    b.line(&format!("| flex_sync_job | {} | {our_us:.0} |", micro_figures(&mut ours)));
    b.line(&format!("| naive PL/Python | {} | {their_us:.0} |", micro_figures(&mut theirs)));
    b.line(&format!(
        "\nflex_sync at {:.0}% of the naive call's p50 and {:.0}% of its backend CPU.",
        100.0 * ours[ours.len() / 2] / theirs[theirs.len() / 2],
        100.0 * our_us / their_us
    ));
    b.line("\nThe whole call as the client sees it (one listing each, each statement prepared once), after");
    b.line("20 warm-up calls of each, in alternating blocks of 20. Backend CPU: user and system time of every");
    b.line("thread of the backend (`/proc/self/task/*/schedstat`), read between blocks (the reading is");
    b.line("counted once per block).");
    b.line("The naive one reads the desired crew and the rows, lists Flex, compares and writes its log row,");
    b.line("and nothing else (no authorization, no checks, no lock, no record of lines). Goal: flex_sync at");
    b.line("half the naive one or less.");
}

/// On-CPU time of every thread of the connection's backend so far (the server must run on this
/// machine, the role be allowed to read server files).
fn backend_cpu(client: &mut Client) -> Duration {
    let ns: i64 = client
        .query_one(
            "SELECT sum(split_part(pg_read_file('/proc/self/task/' || t || '/schedstat'), ' ', 1)::bigint)::bigint
             FROM pg_ls_dir('/proc/self/task') t",
            &[],
        )
        .unwrap()
        .get(0);
    Duration::from_nanos(ns as u64)
}

/// The merge at scale: a target of 1,000,000 rows, 100,000 of them another owner's; an incremental
/// merge of 10,000 changed rows and a full merge, against the seed's TRUNCATE + INSERT.
fn merge_at_scale(b: &mut Bench) {
    b.line("\n## 9. The source-preserving merge at 1,000,000 rows\n");
    let db = TestDb::empty("bench_merge");
    let mut client = db.connect();
    let setup = "CREATE EXTENSION IF NOT EXISTS flex_sync;
         DROP TABLE IF EXISTS target, staging;
         CREATE TABLE target (id integer PRIMARY KEY, name text, amount numeric, updated_at timestamptz, source text NOT NULL);
         CREATE TABLE staging (id integer, name text, amount numeric, updated_at timestamptz);
         INSERT INTO staging SELECT i, 'row ' || i, i % 1000, timestamptz '2025-01-01' + i * interval '1 second'
         FROM generate_series(1, 900000) i;
         INSERT INTO target SELECT id, name, amount, updated_at, 'D' FROM staging;
         INSERT INTO target SELECT i, 'mobile ' || i, 0, now(), 'M' FROM generate_series(900001, 1000000) i;";
    client.batch_execute(setup).unwrap();
    client.batch_execute("VACUUM ANALYZE target").unwrap();
    client.batch_execute("VACUUM ANALYZE staging").unwrap();
    let timed = |client: &mut Client, sql: &str| {
        let t = Instant::now();
        client.batch_execute(sql).unwrap();
        ms(t.elapsed())
    };
    let others = |client: &mut Client| -> i64 { client.query_one("SELECT count(*) FROM target WHERE source <> 'D'", &[]).unwrap().get(0) };
    let merged = |client: &mut Client, options: &str| -> (f64, Value) {
        let t = Instant::now();
        let text: String = client
            .query_one("SELECT flex_sync_merge('target', 'staging', ARRAY['id'], 'source', 'D', $1::text::jsonb)::text", &[&options])
            .unwrap()
            .get(0);
        (ms(t.elapsed()), serde_json::from_str(&text).unwrap())
    };
    // The watermark at the end of the loaded rows, then 10,000 of them change.
    merged(&mut client, r#"{"cursor_column": "updated_at"}"#);
    client.batch_execute("UPDATE staging SET amount = amount + 1, updated_at = now() WHERE id % 90 = 0").unwrap();
    let (incremental, result) = merged(&mut client, r#"{"cursor_column": "updated_at"}"#);
    assert_eq!(result["updated"], 10_000, "{result}");
    let kept_incremental = others(&mut client);
    client.batch_execute("UPDATE staging SET amount = amount + 1 WHERE id % 90 = 1").unwrap();
    let (full, result) = merged(&mut client, r#"{"mode": "full"}"#);
    assert_eq!(result["updated"], 10_000, "{result}");
    let kept_full = others(&mut client);
    let truncate = timed(
        &mut client,
        "BEGIN; TRUNCATE target; INSERT INTO target SELECT id, name, amount, updated_at, 'D' FROM staging; COMMIT;",
    );
    let after_truncate = others(&mut client);
    b.line("| method | ms | rows of the other owner after (of 100,000) |");
    b.line("|---|---|---|");
    b.line(&format!("| flex_sync_merge, incremental, 10,000 changed rows | {incremental:.0} | {kept_incremental} |"));
    b.line(&format!("| flex_sync_merge, full (900,000 source rows, 10,000 changed) | {full:.0} | {kept_full} |"));
    b.line(&format!("| TRUNCATE + INSERT (the seed's forward sync) | {truncate:.0} | {after_truncate} |"));
    b.line("\nOne run each on the bench server (defaults of cluster.sh). The merge changes only rows of owner");
    b.line("D; TRUNCATE takes every other owner's rows with it.");
}

/// The ingest at scale: 10 devices send 100,000 operations in batches of 500 at once (customers,
/// their sales listed before them half the time, products two devices share by IMEI), then send
/// every batch again, answered from the record.
fn ingest_at_scale(b: &mut Bench) {
    const DEVICES: usize = 10;
    const BATCHES: usize = 20;
    b.line("\n## 10. The idempotent ingest: 100,000 operations in batches of 500 from 10 devices\n");
    let db = TestDb::empty("bench_ingest");
    db.connect()
        .batch_execute(
            "CREATE EXTENSION flex_sync;
             CREATE TABLE customers (id uuid PRIMARY KEY, name text NOT NULL);
             CREATE TABLE products (id uuid PRIMARY KEY, imei text NOT NULL UNIQUE, model text);
             CREATE TABLE sales (id uuid PRIMARY KEY, customer_id uuid REFERENCES customers, total numeric NOT NULL);
             CREATE INDEX ON sales (customer_id);
             SELECT flex_sync_ingest_register('customers');
             SELECT flex_sync_ingest_register('products', ARRAY['imei']);
             SELECT flex_sync_ingest_register('sales');",
        )
        .unwrap();
    let batch = |device: usize, n: usize| -> String {
        let mut ops = Vec::with_capacity(500);
        let customer = |i: usize| format!("c{n}-{i}");
        let sales: Vec<Value> = (0..300)
            .map(|i| {
                // A third name a customer of the previous batch, the rest one of this batch.
                let parent = if n > 0 && i % 3 == 0 { format!("c{}-{}", n - 1, i % 100) } else { customer(i % 100) };
                json!({"op_id": format!("s{n}-{i}"), "table": "sales", "local_id": format!("s{n}-{i}"), "action": "upsert",
                       "data": {"customer_id": parent, "total": i}})
            })
            .collect();
        let customers: Vec<Value> = (0..100)
            .map(|i| json!({"op_id": format!("c{n}-{i}"), "table": "customers", "local_id": customer(i), "action": "upsert",
                            "data": {"name": format!("customer {device} {n} {i}")}}))
            .collect();
        // Devices 2k and 2k+1 sell the same phones: they meet on one row per IMEI.
        let products = (0..100).map(|i| {
            json!({"op_id": format!("p{n}-{i}"), "table": "products", "local_id": format!("p{n}-{i}"), "action": "upsert",
                   "data": {"imei": format!("IMEI-{}-{n}-{i}", device / 2), "model": "X"}})
        });
        if n % 2 == 0 {
            ops.extend(sales);
            ops.extend(customers);
        } else {
            ops.extend(customers);
            ops.extend(sales);
        }
        ops.extend(products);
        Value::Array(ops).to_string()
    };
    let batches: Vec<Vec<String>> = (0..DEVICES).map(|d| (0..BATCHES).map(|n| batch(d, n)).collect()).collect();
    let send_all = |batches: &Vec<Vec<String>>| -> (Duration, BTreeMap<String, u64>) {
        let start = Instant::now();
        let handles: Vec<_> = batches
            .iter()
            .enumerate()
            .map(|(device, list)| {
                let (conninfo, list) = (db.conninfo.clone(), list.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(&conninfo, NoTls).unwrap();
                    let mut statuses = BTreeMap::new();
                    for batch in &list {
                        let text: String = client
                            .query_one("SELECT flex_sync_ingest($1, $2::text::jsonb)::text", &[&format!("device-{device}"), batch])
                            .unwrap()
                            .get(0);
                        let result: Value = serde_json::from_str(&text).unwrap();
                        for r in result["results"].as_array().unwrap() {
                            *statuses.entry(r["status"].as_str().unwrap().to_string()).or_insert(0u64) += 1;
                        }
                    }
                    statuses
                })
            })
            .collect();
        let mut total = BTreeMap::new();
        for h in handles {
            for (k, v) in h.join().unwrap() {
                *total.entry(k).or_insert(0) += v;
            }
        }
        (start.elapsed(), total)
    };
    let mut client = db.connect();
    let rows = |client: &mut Client| -> (i64, i64, i64) {
        let r = client
            .query_one("SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM sales), (SELECT count(*) FROM products)", &[])
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let (first, first_statuses) = send_all(&batches);
    let after_first = rows(&mut client);
    assert_eq!(first_statuses.get("applied"), Some(&100_000), "{first_statuses:?}");
    assert_eq!(after_first, (20_000, 60_000, 10_000), "one product row per IMEI two devices share");
    let written_before: i64 = client.query_one("SELECT count(*) FROM flex_sync_private.ingest_operations", &[]).unwrap().get(0);
    let (replay, replay_statuses) = send_all(&batches);
    assert_eq!(replay_statuses.get("replayed"), Some(&100_000), "{replay_statuses:?}");
    assert_eq!(rows(&mut client), after_first, "a replay writes no row");
    let written_after: i64 = client.query_one("SELECT count(*) FROM flex_sync_private.ingest_operations", &[]).unwrap().get(0);
    assert_eq!(written_before, written_after);
    let per_second = |d: Duration| 100_000.0 / d.as_secs_f64();
    b.line("| run | seconds | operations per second | results |");
    b.line("|---|---|---|---|");
    b.line(&format!("| first delivery | {:.1} | {:.0} | {first_statuses:?} |", first.as_secs_f64(), per_second(first)));
    b.line(&format!("| the same batches again | {:.1} | {:.0} | {replay_statuses:?} |", replay.as_secs_f64(), per_second(replay)));
    b.line(&format!(
        "\nOne run, 10 connections at once (one per device, each sending its 20 batches in turn) on the bench server.\n\
         After the first delivery: {} customers, {} sales, {} products (pairs of devices share every IMEI);\n\
         the replay wrote no row and no record.",
        after_first.0, after_first.1, after_first.2
    ));
}

/// A named part of the benchmarks, run alone with `bench.sh <name>`.
type Section = fn(&mut Bench);

fn main() {
    let mut b = Bench { out: String::new() };
    b.line("# flex_sync benchmarks\n");
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024))
        .unwrap_or(0);
    let mut admin = Client::connect(&server_conninfo(), NoTls).unwrap();
    let version: String = admin.query_one("SELECT version()", &[]).unwrap().get(0);
    let mut header = String::new();
    let _ = write!(
        header,
        "Machine: {machine}, {cores} cores, {memory} GiB. {version}. Extension built with `cargo pgrx install --release`.\n\
         Simulator in process on loopback. Run: `bash pg_test/bench.sh`."
    );
    b.line(&header);
    let only = std::env::args().nth(1);
    let sections: [(&str, Section); 10] = [
        ("calls", flex_calls),
        ("wall", wall_time),
        ("cost", database_cost),
        ("queue", queue_drain),
        ("dedupe", dedupe),
        ("click", interactive_during_run),
        ("storm", storm_comparison),
        ("naive", naive_comparison),
        ("merge", merge_at_scale),
        ("ingest", ingest_at_scale),
    ];
    for (name, section) in sections {
        if only.as_deref().is_none_or(|o| o == name) {
            section(&mut b);
        }
    }
    if let Ok(path) = std::env::var("FLEX_SYNC_BENCH_OUT") {
        std::fs::write(path, &b.out).unwrap();
    }
}
