//! The simulation's benchmark and replay tool.
//!   simulate [SCHEDULES] [OUT]     runs SCHEDULES seeds (default 1,000,000) of the correct
//!                                  protocol on every core and writes schedules per second to OUT
//!                                  (default bench/results-simulation.md)
//!   simulate --trace SEED [VARIANT] prints one schedule's trace (VARIANT: correct, no-lock,
//!                                  blind-add-retry, stale-snapshot)

use std::fmt::Write as _;
use std::time::Instant;

use flex_sync_core::simulation::{check, run, Counts, Variant};

fn variant(name: &str) -> Variant {
    match name {
        "correct" => Variant::Correct,
        "no-lock" => Variant::NoLock,
        "blind-add-retry" => Variant::BlindAddRetry,
        "stale-snapshot" => Variant::StaleSnapshot,
        other => {
            eprintln!("simulate: unknown variant {other:?}");
            std::process::exit(2)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--trace") {
        let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("simulate: --trace needs a seed");
            std::process::exit(2)
        });
        match run(seed, variant(args.get(2).map(String::as_str).unwrap_or("correct")), true) {
            Ok(run) => println!("{}\nseed {seed} keeps every invariant", run.trace.join("\n")),
            Err(violation) => {
                print!("{violation}");
                std::process::exit(1)
            }
        }
        return;
    }
    let schedules: u64 = args.first().map(|s| s.parse().expect("SCHEDULES is a number")).unwrap_or(1_000_000);
    let out = args.get(1).cloned().unwrap_or_else(|| "bench/results-simulation.md".to_string());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    let started = Instant::now();
    let totals: Vec<Counts> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut total = Counts::default();
                    for seed in (t..schedules).step_by(threads as usize) {
                        match check(seed, Variant::Correct) {
                            Ok(counts) => total.add(&counts),
                            Err(violation) => {
                                print!("{violation}");
                                std::process::exit(1)
                            }
                        }
                    }
                    total
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a simulation thread panicked")).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut counts = Counts::default();
    for total in &totals {
        counts.add(total);
    }
    let mut text = String::new();
    let _ = writeln!(text, "# The deterministic simulation\n");
    let _ = writeln!(text, "`cargo run --release -p flex_sync_core --bin simulate -- {schedules}`, {threads} threads.\n");
    let _ = writeln!(text, "| schedules | seconds | schedules per second | events | syncs | Flex calls |");
    let _ = writeln!(text, "|---|---|---|---|---|---|");
    let _ = writeln!(
        text,
        "| {schedules} | {elapsed:.1} | {:.0} | {} | {} | {} |",
        schedules as f64 / elapsed,
        counts.events,
        counts.syncs,
        counts.flex_calls
    );
    let _ = writeln!(text, "\nEvery schedule kept every invariant. Faults injected: {:?}.", counts.faults);
    let _ = writeln!(text, "Changes of the world: {:?}.", counts.world);
    std::fs::write(&out, &text).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    print!("{text}");
    println!("written to {out}");
}
