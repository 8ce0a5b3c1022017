//! The README's first command ends here: a real sync on a throwaway database against the
//! simulator. A job with sound and lights crews, two syncs started at the same moment, a contact
//! deleted by hand in Flex, one more sync; then the summaries, the log and both sides of every
//! crew call. Exits non-zero if the database and the simulator disagree.

use flex_sync_pg_test::harness::*;
use serde_json::{json, Value};

fn print_summary(label: &str, result: &Value) {
    println!("\n== {label}: ok = {}", result["ok"]);
    for (dept, s) in result["summary"].as_object().unwrap() {
        println!(
            "   {dept:<7} status={:<8} added={:<2} removed={:<2} kept={:<2} adopted={:<2} stale_removed={:<2} rolesSet={:<2} flex_calls={:<3} errors={} diagnostics={}",
            s["status"].as_str().unwrap_or("-"),
            s["added"], s["removed"], s["kept"], s["adopted"], s["stale_removed"], s["rolesSet"], s["flex_calls"],
            s["errors"], s["business_role_diagnostics"].as_array().map_or(0, Vec::len)
        );
    }
}

fn main() {
    let (db, sim, mut client) = rig("demo", json!({"max_parallel_requests": 4}));
    let job = create_job(&mut client, &["sound", "lights"], &SAMPLE_CREW);
    println!("flex_sync demo: job {} with {} technicians; Flex simulator at {}", job.id, SAMPLE_CREW.len(), sim.server.base_url());

    let first_two = sync_concurrently(&db.conninfo, &job.id, 2);
    print_summary("sync A (started together with B)", &first_two[0]);
    print_summary("sync B (started together with A)", &first_two[1]);

    let element = &job.elements["sound"];
    let (line, resource, _) = sim.contacts(element)[0].clone();
    sim.delete_by_hand(&line);
    println!("\n== deleted contact {line} (resource {resource}) by hand in Flex");
    let third = sync(&mut client, &job.id);
    print_summary("sync C (after the manual delete)", &third);

    println!("\n== flex_sync_log");
    for row in client
        .query(
            "SELECT id, department, status, added, removed, kept, roles_set, failed, flex_calls, duration_ms, triggered_by
             FROM flex_sync_log ORDER BY id",
            &[],
        )
        .unwrap()
    {
        println!(
            "   #{:<2} {:<7} {:<8} added={:<2} removed={:<2} kept={:<2} roles_set={:<2} failed={} flex_calls={:<3} {:>4} ms by {}",
            row.get::<_, i64>(0), row.get::<_, String>(1), row.get::<_, String>(2), row.get::<_, i32>(3),
            row.get::<_, i32>(4), row.get::<_, i32>(5), row.get::<_, i32>(6), row.get::<_, i32>(7),
            row.get::<_, i32>(8), row.get::<_, i32>(9), row.get::<_, String>(10)
        );
    }

    for (dept, element) in &job.elements {
        println!("\n== {dept}: database rows | Flex contacts (simulator)");
        let rows = client
            .query(
                "SELECT p.flex_resource_id, a.flex_line_item_id::text FROM flex_crew_assignments a
                 JOIN flex_crew_calls c ON c.id = a.crew_call_id JOIN profiles p ON p.id = a.technician_id
                 WHERE c.flex_element_id = $1::text::uuid ORDER BY 1",
                &[element],
            )
            .unwrap();
        let mut contacts = sim.contacts(element);
        contacts.sort_by(|a, b| a.1.cmp(&b.1));
        for i in 0..rows.len().max(contacts.len()) {
            let left = rows
                .get(i)
                .map(|r| format!("{} -> {}", r.get::<_, String>(0), r.get::<_, String>(1)))
                .unwrap_or_default();
            let right = contacts
                .get(i)
                .map(|(l, r, role)| format!("{r} line {l} role {}", role.as_deref().unwrap_or("-")))
                .unwrap_or_default();
            println!("   {left:<62} | {right}");
        }
    }

    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_converged(&mut client, &sim, &job)));
    match verdict {
        Ok(()) => println!("\nconverged: database rows, desired crew and Flex contacts agree"),
        Err(_) => {
            eprintln!("\nNOT converged: the database and the simulator disagree (see above)");
            std::process::exit(1);
        }
    }
}
