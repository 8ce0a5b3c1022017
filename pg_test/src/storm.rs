//! The storm: 16 connections churn assignments (adds, removals, role changes), delete contacts by
//! hand in the simulator and sync, over three jobs that share technicians, for a bounded time.
//! Then one final sync per job. The storm test holds flex_sync to I1 and I2 with no duplicate
//! contact; the benchmarks run the Edge Function replica through the same storm for comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::edge_function::EdgeFunction;
use crate::harness::*;
use postgres::{Client, NoTls};
use serde_json::json;

const CONNECTIONS: usize = 16;
const STORM: Duration = Duration::from_secs(6);
const ROLES: [&str; 6] = ["SND-FOH-R", "SND-RF-E", "SND-PA-T", "LGT-BRD-R", "LGT-SYS-E", "LGT-PA-T"];

#[derive(Clone, Copy, PartialEq)]
pub enum Engine {
    FlexSync,
    EdgeFunction,
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What the storm left, counted after the final syncs.
#[derive(Debug, Default)]
pub struct Outcome {
    pub syncs: usize,
    pub duplicate_rows: i64,
    pub duplicate_contacts: usize,
    pub missing_crew: usize,
    pub extra_contacts: usize,
    pub rows_not_matching_flex: usize,
}

fn run_sync(engine: Engine, client: &mut Client, edge: &EdgeFunction, job: &str) -> serde_json::Value {
    match engine {
        // Errors here would be database errors: the storm must never produce one.
        Engine::FlexSync => sync(client, job),
        Engine::EdgeFunction => edge.sync(client, job, None),
    }
}

/// `unique_constraint` false drops the constraint, as deployments had it before the audit.
pub fn storm(engine: Engine, name: &str, unique_constraint: bool) -> Outcome {
    let db = TestDb::create(name);
    let sim = Sim::start();
    let mut client = db.connect();
    if !unique_constraint {
        client
            .batch_execute("ALTER TABLE flex_crew_assignments DROP CONSTRAINT flex_crew_assignments_crew_call_id_technician_id_key")
            .unwrap();
    }
    configure(&mut client, &sim, json!({"max_parallel_requests": 4}));
    // The storm is about races, not Flex's hourly budget (tested on its own).
    sim.set_config(json!({"hourly_budget": 10_000_000}));
    let jobs: Vec<Job> = (0..3).map(|_| create_job(&mut client, &["sound", "lights"], &[])).collect();
    let technicians: Vec<Technician> = (0..16)
        .map(|i| {
            let dept = if i % 2 == 0 { "sound" } else { "lights" };
            add_technician(&mut client, &jobs[i % 3].id, dept, ROLES[i % 6], &format!("storm-res-{i}"))
        })
        .collect();
    let job_ids: Arc<Vec<String>> = Arc::new(jobs.iter().map(|j| j.id.clone()).collect());
    let elements: Arc<Vec<String>> = Arc::new(jobs.iter().flat_map(|j| j.elements.values().cloned()).collect());
    let tech_ids: Arc<Vec<String>> = Arc::new(technicians.iter().map(|t| t.id.clone()).collect());
    let sim = Arc::new(sim);
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let (job_ids, elements, tech_ids, sim, barrier) =
                (job_ids.clone(), elements.clone(), tech_ids.clone(), sim.clone(), barrier.clone());
            let conninfo = db.conninfo.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&conninfo, NoTls).unwrap();
                let edge = EdgeFunction::new(&sim.server.base_url(), SIM_TOKEN);
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((worker as u64 + 1) * 0x2545_F491));
                let mut syncs = 0;
                barrier.wait();
                let end = Instant::now() + STORM;
                while Instant::now() < end {
                    let job = &job_ids[rng.below(job_ids.len())];
                    let tech = &tech_ids[rng.below(tech_ids.len())];
                    match rng.below(10) {
                        0 | 1 => {
                            let role = ROLES[rng.below(ROLES.len())];
                            let column = if role.starts_with("SND") { "sound_role" } else { "lights_role" };
                            c.execute(
                                &format!(
                                    "INSERT INTO job_assignments (job_id, technician_id, {column}, status)
                                     VALUES ($1::text::uuid, $2::text::uuid, $3, 'confirmed')
                                     ON CONFLICT (job_id, technician_id) DO NOTHING"
                                ),
                                &[job, tech, &role],
                            )
                            .unwrap();
                        }
                        2 => {
                            c.execute(
                                "DELETE FROM job_assignments WHERE job_id = $1::text::uuid AND technician_id = $2::text::uuid",
                                &[job, tech],
                            )
                            .unwrap();
                        }
                        3 => {
                            let role = ROLES[rng.below(3)];
                            c.execute(
                                "UPDATE job_assignments SET sound_role = $3
                                 WHERE job_id = $1::text::uuid AND technician_id = $2::text::uuid AND sound_role IS NOT NULL",
                                &[job, tech, &role],
                            )
                            .unwrap();
                        }
                        4 => {
                            let contacts = sim.contacts(&elements[rng.below(elements.len())]);
                            if !contacts.is_empty() {
                                sim.delete_by_hand(&contacts[rng.below(contacts.len())].0);
                            }
                        }
                        _ => {
                            run_sync(engine, &mut c, &edge, job);
                            syncs += 1;
                        }
                    }
                }
                syncs
            })
        })
        .collect();
    let syncs: usize = handles.into_iter().map(|h| h.join().expect("a storm worker failed")).sum();

    let edge = EdgeFunction::new(&sim.server.base_url(), SIM_TOKEN);
    let finals: Vec<_> = job_ids.iter().map(|job| run_sync(engine, &mut client, &edge, job)).collect();
    if engine == Engine::FlexSync {
        for result in &finals {
            assert_eq!(result["ok"], true, "final sync: {result}");
        }
    }
    let mut outcome = measure(&mut client, &sim, &jobs);
    outcome.syncs = syncs;
    if engine == Engine::FlexSync {
        for job in &jobs {
            assert_converged(&mut client, &sim, job);
        }
    }
    outcome
}

fn measure(client: &mut Client, sim: &Sim, jobs: &[Job]) -> Outcome {
    let mut outcome = Outcome {
        duplicate_rows: client
            .query_one(
                "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) n FROM flex_crew_assignments
                 GROUP BY crew_call_id, technician_id HAVING count(*) > 1) d",
                &[],
            )
            .unwrap()
            .get(0),
        ..Default::default()
    };
    for job in jobs {
        for (dept, element) in &job.elements {
            let desired: BTreeSet<String> = client
                .query("SELECT flex_resource_id FROM flex_sync_private.desired_crew($1::text::uuid, $2)", &[&job.id, dept])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let contacts = sim.contacts(element);
            let mut per_resource: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, resource, _) in &contacts {
                *per_resource.entry(resource.as_str()).or_default() += 1;
            }
            outcome.duplicate_contacts += per_resource.values().map(|n| n - 1).sum::<usize>();
            outcome.missing_crew += desired.iter().filter(|r| !per_resource.contains_key(r.as_str())).count();
            outcome.extra_contacts += per_resource.keys().filter(|r| !desired.contains(**r)).count();
            let rows: Vec<String> = client
                .query(
                    "SELECT a.flex_line_item_id::text FROM flex_crew_assignments a JOIN flex_crew_calls c ON c.id = a.crew_call_id
                     WHERE c.flex_element_id = $1::text::uuid",
                    &[element],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            outcome.rows_not_matching_flex += rows.iter().filter(|l| !contacts.iter().any(|(c, _, _)| c == *l)).count();
        }
    }
    outcome
}

