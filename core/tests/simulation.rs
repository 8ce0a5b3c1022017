//! The deterministic simulation of the reconcile protocol (`flex_sync_core::simulation`): many
//! seeded schedules of concurrent reconcilers, faults and a changing world, every invariant
//! checked after every event. `SEED=<n> cargo test -p flex_sync_core --test simulation` replays
//! one schedule and prints its trace; `SCHEDULES=<n>` changes how many run.

use flex_sync_core::simulation::{check, run, Counts, Invariant, Variant};

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")))
}

/// Runs the seeds on two threads; the first violation found panics with its seed and trace.
fn run_all(seeds: std::ops::Range<u64>, variant: Variant) -> Counts {
    let threads = 2;
    let chunks: Vec<Vec<u64>> = (0..threads).map(|t| seeds.clone().skip(t).step_by(threads).collect()).collect();
    let results: Vec<Result<Counts, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut total = Counts::default();
                    for seed in chunk {
                        total.add(&check(seed, variant).map_err(|v| v.to_string())?);
                    }
                    Ok(total)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a simulation thread panicked")).collect()
    });
    let mut total = Counts::default();
    for result in results {
        match result {
            Ok(counts) => total.add(&counts),
            Err(violation) => panic!("{violation}"),
        }
    }
    total
}

#[test]
fn every_schedule_keeps_every_invariant() {
    if let Some(seed) = env_number("SEED") {
        match run(seed, Variant::Correct, true) {
            Ok(run) => println!("seed {seed} holds:\n  {}\n{:?}", run.trace.join("\n  "), run.counts),
            Err(violation) => panic!("{violation}"),
        }
        return;
    }
    let schedules = env_number("SCHEDULES").unwrap_or(20_000);
    let counts = run_all(0..schedules, Variant::Correct);
    println!("{schedules} schedules: {counts:?}");
    // The schedules did what the simulation claims to test: every fault and every change of
    // the world happened, many times.
    for fault in ["4xx", "5xx before apply", "5xx after apply", "timeout before apply", "timeout after apply",
                  "dropped before apply", "dropped after apply", "garbage body", "add without line id",
                  "429 budget", "429 concurrent"] {
        assert!(counts.faults.get(fault).copied().unwrap_or(0) >= 100, "fault {fault} too rare: {counts:?}");
    }
    for change in ["assigned", "unassigned", "role changed", "hand add", "hand delete", "hand role",
                   "backend killed", "late call of a killed backend", "caller rollback", "skipped busy"] {
        assert!(counts.world.get(change).copied().unwrap_or(0) >= 100, "{change} too rare: {counts:?}");
    }
    assert!(counts.held >= 100, "the guard held too rarely: {counts:?}");
    assert!(counts.syncs >= 5 * schedules, "{counts:?}");
}

#[test]
fn a_seed_always_gives_the_same_trace() {
    for seed in (0..200).chain([31_337, 1 << 40]) {
        for variant in [Variant::Correct, Variant::NoLock, Variant::BlindAddRetry, Variant::StaleSnapshot] {
            let first = run(seed, variant, true);
            let second = run(seed, variant, true);
            let events = match &first {
                Ok(run) => run.trace.len(),
                Err(violation) => violation.trace.len(),
            };
            assert!(events >= 3, "seed {seed} traced only {events} events");
            assert_eq!(first, second, "seed {seed} ran two ways under {variant:?}");
        }
    }
}

/// Each deliberately broken way of running the protocol is caught within a bounded number of
/// seeds, by the invariant that names its mistake.
#[test]
fn broken_variants_are_caught() {
    let cases = [
        (Variant::NoLock, Invariant::TwoAddsInFlight),
        (Variant::BlindAddRetry, Invariant::TwoAddsInFlight),
        (Variant::StaleSnapshot, Invariant::SecondContact),
    ];
    for (variant, expected) in cases {
        let caught = (0..2_000u64).find_map(|seed| run(seed, variant, false).err());
        let violation = caught.unwrap_or_else(|| panic!("{variant:?} passed 2,000 seeds"));
        assert_eq!(violation.invariant, expected, "{variant:?}: {violation}");
        println!("{variant:?} caught at seed {} by {:?}", violation.seed, violation.invariant);
    }
}
