//! A deterministic simulation of the reconcile protocol. N reconcilers run the real
//! [`Reconcile`] state machine, each as a backend would (lock, read after the lock, calls, one
//! commit), over a model database and a model Flex, while the world changes underneath them:
//! assignments and roles churn, people edit the crew call in Flex by hand, callers roll back,
//! backends are killed, and Flex answers with every fault the HTTP simulator injects. One thread,
//! no clock, no I/O: a seed is a schedule, and the same seed always gives the same trace.
//!
//! The invariants are checked after every event and at quiescence (see [`Violation`]). The
//! model's simplifications: one crew call; a call reaches Flex or not at the moment it is
//! delivered; the client sends a failed idempotent call again at once (up to the default three
//! attempts, without the backoff's wait); a "timeout before apply" is a request Flex never
//! applies; listings always carry the business-role column; the application never writes the
//! rows itself.
//!
//! A killed backend's calls already sent may still reach Flex after it died, after its lock is
//! gone, when another sync may already have listed: nobody will read their answers. An add
//! among them can leave a resource with a second contact that no sync could have known about;
//! such contacts are marked [`Origin::LateAdd`], exempt from the per-event checks, and must be
//! gone by quiescence like any other (I2).

mod db;
mod flex;
pub(crate) mod rng;

use std::collections::BTreeMap;
use std::fmt;

use crate::endpoints::FlexCall;
use crate::guard::Guard;
use crate::plan::OrphanPolicy;
use crate::protocol::{Answer, Conclusion, ErrorCode, Failure, Outcome, Reconcile, Request, Step, Tag};
use crate::roles::RoleTarget;
use db::{resource_of, role_map, ModelDb, ELEMENT};
pub use flex::Origin;
use flex::ModelFlex;
use rng::Rng;

/// How the reconcilers use the protocol. `Correct` is what `src/sync.rs` does; the others are
/// the mistakes the simulation must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Correct,
    /// Syncs without the crew call's advisory lock.
    NoLock,
    /// A client that sends an add again at once when its answer was lost, without looking.
    BlindAddRetry,
    /// Reads the rows and lists Flex before taking the lock, then diffs that old snapshot (what
    /// the Edge Function did).
    StaleSnapshot,
}

/// An invariant that did not hold, with the schedule's trace when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub invariant: Invariant,
    pub detail: String,
    pub trace: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// I1: two rows for one technician.
    TwoRows,
    /// A commit PostgreSQL would refuse (one row upserted twice in a statement).
    RefusedWrite,
    /// Two adds of one resource whose outcome was not known at the same time.
    TwoAddsInFlight,
    /// Flex holds two contacts the sync made for one resource.
    SecondContact,
    /// I4: under `keep`, a contact the sync does not own was deleted.
    DeletedNotOwned,
    /// I2: one clean sync after the faults stopped did not converge.
    NotConverged,
    /// I3: the sync after that did not make exactly one call and write nothing.
    NotQuiet,
    /// I6: a sync that was not forced deleted what the guard holds.
    MassDelete,
    /// The schedule did not come to rest (a reconciler never finished).
    NoProgress,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} broke {:?}: {}", self.seed, self.invariant, self.detail)?;
        writeln!(f, "replay: SEED={} cargo test -p flex_sync_core --test simulation", self.seed)?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What one schedule did, summed over runs to show the simulation exercised what it claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub syncs: u64,
    /// Syncs whose deletes the guard held.
    pub held: u64,
    pub flex_calls: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub world: BTreeMap<&'static str, u64>,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.events += other.events;
        self.syncs += other.syncs;
        self.held += other.held;
        self.flex_calls += other.flex_calls;
        for (k, v) in &other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in &other.world {
            *self.world.entry(k).or_default() += v;
        }
    }
}

/// The shape of one schedule, drawn from its seed.
#[derive(Debug, Clone)]
struct Shape {
    reconcilers: usize,
    syncs_each: usize,
    orphan_policy: OrphanPolicy,
    technicians: usize,
    fault_percent: u32,
    world_percent: u32,
    chaos_events: usize,
    /// Concurrent requests Flex still accepts from us (other clients of the tenant hold the rest
    /// of its 30).
    concurrent_slots: usize,
    budget: u64,
    bulk_delete: bool,
    /// The guard's max_delete_fraction in thousandths, and how often a chaos sync is forced.
    max_delete_permille: u32,
    force_percent: u32,
    /// How often a chaos sync is a scheduler's, which skips a crew call another sync holds
    /// (`wait_for_lock => false`) instead of waiting.
    skip_busy_percent: u32,
}

impl Shape {
    fn draw(rng: &mut Rng) -> Shape {
        Shape {
            reconcilers: rng.between(1, 4),
            syncs_each: rng.between(1, 3),
            orphan_policy: if rng.percent(50) { OrphanPolicy::Prune } else { OrphanPolicy::Keep },
            technicians: rng.between(1, 8),
            fault_percent: *rng.pick(&[0, 10, 25, 50]),
            world_percent: *rng.pick(&[0, 5, 15, 30]),
            chaos_events: rng.between(20, 250),
            concurrent_slots: *rng.pick(&[2, 4, 30]),
            budget: *rng.pick(&[15, 40, 10_000]),
            bulk_delete: rng.percent(70),
            max_delete_permille: *rng.pick(&[0, 500, 1000]),
            force_percent: *rng.pick(&[0, 30, 100]),
            skip_busy_percent: *rng.pick(&[0, 50]),
        }
    }
}

/// The faults a delivered call can meet, as the HTTP simulator injects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ClientError,
    ServerErrorBeforeApply,
    ServerErrorAfterApply,
    TimeoutBeforeApply,
    TimeoutAfterApply,
    DroppedBeforeApply,
    DroppedAfterApply,
    GarbageBody,
    AddWithoutLineId,
}

const FAULTS: [Fault; 9] = [
    Fault::ClientError,
    Fault::ServerErrorBeforeApply,
    Fault::ServerErrorAfterApply,
    Fault::TimeoutBeforeApply,
    Fault::TimeoutAfterApply,
    Fault::DroppedBeforeApply,
    Fault::DroppedAfterApply,
    Fault::GarbageBody,
    Fault::AddWithoutLineId,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ClientError => "4xx",
            Fault::ServerErrorBeforeApply => "5xx before apply",
            Fault::ServerErrorAfterApply => "5xx after apply",
            Fault::TimeoutBeforeApply => "timeout before apply",
            Fault::TimeoutAfterApply => "timeout after apply",
            Fault::DroppedBeforeApply => "dropped before apply",
            Fault::DroppedAfterApply => "dropped after apply",
            Fault::GarbageBody => "garbage body",
            Fault::AddWithoutLineId => "add without line id",
        }
    }

    fn applies(self) -> bool {
        matches!(
            self,
            Fault::ServerErrorAfterApply | Fault::TimeoutAfterApply | Fault::DroppedAfterApply | Fault::GarbageBody | Fault::AddWithoutLineId
        )
    }

    /// What the client makes of the fault, as `src/flex_client.rs` classifies it: a call that
    /// changes Flex and got no success back may have applied.
    fn outcome(self, call: &FlexCall) -> Outcome {
        let may_have_applied = !call.is_idempotent();
        let failure = match self {
            Fault::ClientError => Failure::new(ErrorCode::Http(409), Some(409), false),
            Fault::ServerErrorBeforeApply | Fault::ServerErrorAfterApply => {
                Failure::new(ErrorCode::Http(502), Some(502), may_have_applied)
            }
            Fault::TimeoutBeforeApply | Fault::TimeoutAfterApply => Failure::new(ErrorCode::Timeout, None, may_have_applied),
            Fault::DroppedBeforeApply | Fault::DroppedAfterApply => Failure::new(ErrorCode::Connection, None, may_have_applied),
            Fault::GarbageBody => Failure::new(ErrorCode::BadResponse, Some(200), may_have_applied),
            Fault::AddWithoutLineId => return Outcome::Success(b"{}".to_vec()),
        };
        Outcome::Failure(failure)
    }
}

/// A call sent and not yet delivered.
struct InFlight {
    id: u64,
    actor: usize,
    tag: Tag,
    call: FlexCall,
    role_after_add: Option<String>,
    /// The role call that follows an add, whose outcome goes to the add's answer.
    follow_up: bool,
    /// Sent by a backend that was killed since: it may still reach Flex, and nobody reads its
    /// answer.
    orphaned: bool,
    /// How many times the client has sent it.
    attempt: u32,
}

/// The client's `retry_max_attempts` by default.
const ATTEMPTS: u32 = 3;

enum ActorState {
    /// Between syncs: starts the next one when it can.
    Idle,
    Running(Box<Sync>),
    Finished,
}

/// One sync of one backend.
struct Sync {
    protocol: Reconcile,
    holds_lock: bool,
    /// Calls sent and not yet answered.
    outstanding: usize,
    answers: Vec<Answer>,
    /// The client has seen Flex's hourly budget spent: it sends nothing more.
    rate_limited: bool,
    guard: Guard,
    desired: usize,
    /// Contacts Flex held when the first listing was served.
    contacts_listed: Option<usize>,
}

struct Actor {
    syncs_left: usize,
    state: ActorState,
}

/// An add sent whose outcome nobody knows yet: undelivered, or delivered with an answer that did
/// not say, until a listing served after it shows the truth.
struct UnsettledAdd {
    call: u64,
    resource: String,
    delivered: bool,
}

struct Simulation {
    seed: u64,
    variant: Variant,
    rng: Rng,
    shape: Shape,
    db: ModelDb,
    flex: ModelFlex,
    actors: Vec<Actor>,
    in_flight: Vec<InFlight>,
    unsettled: Vec<UnsettledAdd>,
    next_call: u64,
    chaos: bool,
    counts: Counts,
    trace: Option<Vec<String>>,
    /// The Flex calls of the last finished sync, and whether it wrote anything, for I3.
    last_sync: Option<(u64, bool, Conclusion)>,
    calls_this_sync: BTreeMap<usize, u64>,
}

/// A schedule that kept every invariant: what it did, and its trace when one was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub counts: Counts,
    pub trace: Vec<String>,
}

/// Runs the schedule of `seed`. With `trace`, the run (or its violation) carries every event.
pub fn run(seed: u64, variant: Variant, trace: bool) -> Result<Run, Violation> {
    let mut rng = Rng::new(seed);
    let shape = Shape::draw(&mut rng);
    let mut sim = Simulation {
        seed,
        variant,
        db: ModelDb::default(),
        flex: ModelFlex::new(ELEMENT, shape.budget, shape.bulk_delete),
        actors: (0..shape.reconcilers).map(|_| Actor { syncs_left: shape.syncs_each, state: ActorState::Idle }).collect(),
        in_flight: Vec::new(),
        unsettled: Vec::new(),
        next_call: 0,
        chaos: true,
        counts: Counts::default(),
        trace: trace.then(Vec::new),
        last_sync: None,
        calls_this_sync: BTreeMap::new(),
        shape,
        rng,
    };
    let shape = format!("{variant:?} {:?}", sim.shape);
    sim.note(|| shape);
    sim.setup();
    sim.play()?;
    Ok(Run { counts: sim.counts, trace: sim.trace.unwrap_or_default() })
}

/// An answer as a trace shows it: a body as text, cut short.
fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Success(body) => {
            let text = String::from_utf8_lossy(body);
            let cut: String = text.chars().take(120).collect();
            format!("ok {cut}{}", if cut.len() < text.len() { "..." } else { "" })
        }
        Outcome::Failure(f) => format!("{} (status {:?}, may have applied: {})", f.code, f.status, f.ambiguous),
    }
}

/// Runs `seed`; on a violation, runs it again with the trace on (the run is deterministic, so
/// the second run is the first one, told).
pub fn check(seed: u64, variant: Variant) -> Result<Counts, Violation> {
    run(seed, variant, false).map(|run| run.counts).map_err(|_| match run(seed, variant, true) {
        Err(violation) => violation,
        Ok(_) => panic!("seed {seed} failed once and passed when replayed: the simulation is not deterministic"),
    })
}

impl Simulation {
    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line());
        }
    }

    fn violation(&self, invariant: Invariant, detail: String) -> Violation {
        Violation { seed: self.seed, invariant, detail, trace: self.trace.clone().unwrap_or_default() }
    }

    fn technician(&mut self) -> String {
        format!("t{}", self.rng.below(self.shape.technicians) + 1)
    }

    fn role_code(&mut self) -> Option<String> {
        self.rng.pick(&[Some("SND-PA-T"), Some("SND-FOH-R"), Some("SND-RF-E"), None]).map(str::to_string)
    }

    /// A chaos sync is forced as the shape says; the clean syncs are forced (an operator who
    /// checked), so that convergence does not wait for one.
    fn guard(&mut self) -> Guard {
        let force = !self.chaos || self.rng.percent(self.shape.force_percent);
        Guard { max_delete_permille: self.shape.max_delete_permille, force }
    }

    fn setup(&mut self) {
        for _ in 0..self.shape.technicians {
            let technician = self.technician();
            let role = self.role_code();
            self.db.assigned.insert(technician, role);
        }
        for _ in 0..self.rng.below(3) {
            let technician = self.technician();
            let line = self.flex.new_contact(&resource_of(&technician), Origin::Hand);
            self.note(|| format!("before: a contact {line} for {technician} made by hand"));
        }
        let assigned = format!("{:?}", self.db.assigned);
        self.note(|| format!("before: assigned {assigned}"));
    }

    /// The chaos, then the rest until every reconciler is done, then two clean syncs.
    fn play(&mut self) -> Result<(), Violation> {
        for _ in 0..self.shape.chaos_events {
            if !self.event()? {
                break;
            }
        }
        self.chaos = false;
        // Reconcilers finish the sync they are in and start no other: the clean sync below is
        // the first one after the faults stopped.
        for actor in &mut self.actors {
            if matches!(actor.state, ActorState::Idle) {
                actor.syncs_left = 0;
                actor.state = ActorState::Finished;
            }
        }
        self.flex.calls = 0;
        self.flex.budget = u64::MAX;
        self.note(|| "faults and changes stop".to_string());
        let mut rest = 0;
        while self.event()? {
            rest += 1;
            if rest > 10_000 {
                return Err(self.violation(Invariant::NoProgress, "the reconcilers did not finish".into()));
            }
        }
        self.clean_sync("converging")?;
        self.check_converged()?;
        self.clean_sync("quiet")?;
        let (calls, wrote, conclusion) = self.last_sync.take().expect("a clean sync ran");
        if calls != 1 || wrote || !conclusion.report.errors.is_empty() {
            return Err(self.violation(
                Invariant::NotQuiet,
                format!("{calls} Flex calls, wrote {wrote}, errors {:?}", conclusion.report.errors),
            ));
        }
        Ok(())
    }

    /// One more reconciler, alone, run to the end.
    fn clean_sync(&mut self, name: &str) -> Result<(), Violation> {
        let actor = self.actors.len();
        self.actors.push(Actor { syncs_left: 1, state: ActorState::Idle });
        self.note(|| format!("clean sync ({name}) by a{actor}"));
        let mut steps = 0;
        while self.event()? {
            steps += 1;
            if steps > 1_000 {
                return Err(self.violation(Invariant::NoProgress, format!("the clean sync ({name}) did not finish")));
            }
        }
        Ok(())
    }

    /// One event, drawn among those that can happen now; false when nothing can.
    fn event(&mut self) -> Result<bool, Violation> {
        if self.chaos && self.rng.percent(self.shape.world_percent) {
            self.world_event()?;
            return Ok(true);
        }
        let startable: Vec<usize> = (0..self.actors.len()).filter(|&a| self.can_advance(a)).collect();
        let choices = startable.len() + self.in_flight.len();
        if choices == 0 {
            return Ok(false);
        }
        self.counts.events += 1;
        let choice = self.rng.below(choices);
        if choice < startable.len() {
            self.advance(startable[choice])?;
        } else {
            self.deliver(choice - startable.len())?;
        }
        self.check_always()?;
        Ok(true)
    }

    fn needs_lock(&self) -> bool {
        self.variant != Variant::NoLock
    }

    fn can_advance(&self, actor: usize) -> bool {
        match &self.actors[actor].state {
            // Waiting for the lock, a sync moves only when it may skip (a scheduler's).
            ActorState::Idle => {
                self.actors[actor].syncs_left > 0
                    && (!self.needs_lock()
                        || self.variant == Variant::StaleSnapshot
                        || self.db.lock_is_free_for(actor)
                        || (self.chaos && self.shape.skip_busy_percent > 0))
            }
            ActorState::Running(sync) => {
                sync.outstanding == 0 && (sync.holds_lock || !self.needs_lock() || self.db.lock_is_free_for(actor))
            }
            ActorState::Finished => false,
        }
    }

    fn advance(&mut self, actor: usize) -> Result<(), Violation> {
        match std::mem::replace(&mut self.actors[actor].state, ActorState::Finished) {
            ActorState::Idle => {
                let locks_first = self.needs_lock() && self.variant != Variant::StaleSnapshot;
                if locks_first && !self.db.lock_is_free_for(actor) {
                    // Busy: a scheduler's sync is skipped, an interactive one waits its turn.
                    if self.chaos && self.rng.percent(self.shape.skip_busy_percent) {
                        self.count_world("skipped busy");
                        self.note(|| format!("a{actor} skips the crew call: another sync holds it"));
                        let state = &mut self.actors[actor];
                        state.syncs_left -= 1;
                        state.state = if state.syncs_left == 0 { ActorState::Finished } else { ActorState::Idle };
                    } else {
                        self.actors[actor].state = ActorState::Idle;
                    }
                    return Ok(());
                }
                let holds_lock = locks_first && self.db.try_lock(actor);
                let guard = self.guard();
                let input = self.db.input(self.shape.orphan_policy, guard);
                let (rows, desired) = (input.rows.len(), input.desired.len());
                self.note(|| format!("a{actor} starts a sync (lock: {holds_lock}, {rows} rows read, force: {})", guard.force));
                self.calls_this_sync.insert(actor, 0);
                let sync = Sync {
                    protocol: Reconcile::new(input),
                    holds_lock,
                    outstanding: 0,
                    answers: Vec::new(),
                    rate_limited: false,
                    guard,
                    desired,
                    contacts_listed: None,
                };
                self.actors[actor].state = ActorState::Running(Box::new(sync));
                self.step_protocol(actor)
            }
            ActorState::Running(mut sync) => {
                if self.needs_lock() && !sync.holds_lock {
                    sync.holds_lock = self.db.try_lock(actor);
                    self.note(|| format!("a{actor} takes the lock after its first listing"));
                }
                self.actors[actor].state = ActorState::Running(sync);
                self.step_protocol(actor)
            }
            ActorState::Finished => unreachable!("a finished actor does not advance"),
        }
    }

    /// Feeds the answers gathered so far to the protocol and sends what it asks next, or ends
    /// the sync with its commit (or a rollback).
    fn step_protocol(&mut self, actor: usize) -> Result<(), Violation> {
        let ActorState::Running(sync) = &mut self.actors[actor].state else { unreachable!() };
        let answers = std::mem::take(&mut sync.answers);
        match sync.protocol.step(answers) {
            Step::Send(requests) => {
                for request in requests {
                    self.send(actor, request, false)?;
                }
                Ok(())
            }
            Step::Done(conclusion) => {
                if let Some(problem) = ModelDb::refused(&conclusion.writes) {
                    return Err(self.violation(Invariant::RefusedWrite, format!("a{actor}: {problem}")));
                }
                let (guard, desired, contacts) = (sync.guard, sync.desired, sync.contacts_listed);
                let deleted = conclusion.report.removed - conclusion.report.duplicates_removed;
                if let Some(contacts) = contacts.filter(|_| !guard.force) {
                    if guard.hold_reason(deleted, contacts, desired).is_some() {
                        return Err(self.violation(
                            Invariant::MassDelete,
                            format!("a{actor} deleted {deleted} of {contacts} contacts ({desired} desired) unforced"),
                        ));
                    }
                }
                self.finish(actor, *conclusion);
                Ok(())
            }
        }
    }

    fn send(&mut self, actor: usize, request: Request, follow_up: bool) -> Result<(), Violation> {
        self.next_call += 1;
        let id = self.next_call;
        if let FlexCall::AddContact { resource, .. } = &request.call {
            if let Some(other) = self.unsettled.iter().find(|u| u.resource == *resource) {
                let detail = format!("a{actor} sends add {id} of {resource} while add {} is unsettled", other.call);
                self.note(|| detail.clone());
                return Err(self.violation(Invariant::TwoAddsInFlight, detail));
            }
            self.unsettled.push(UnsettledAdd { call: id, resource: resource.clone(), delivered: false });
        }
        let (tag, call_text) = (request.tag, format!("{:?}", request.call));
        self.note(|| format!("a{actor} sends {id} {tag:?} {call_text}"));
        let ActorState::Running(sync) = &mut self.actors[actor].state else { unreachable!() };
        sync.outstanding += 1;
        self.in_flight.push(InFlight {
            id,
            actor,
            tag: request.tag,
            call: request.call,
            role_after_add: request.role_after_add,
            follow_up,
            orphaned: false,
            attempt: 1,
        });
        Ok(())
    }

    fn finish(&mut self, actor: usize, conclusion: Conclusion) {
        let rollback = self.chaos && self.rng.percent(10);
        let wrote = !conclusion.writes.is_empty();
        if rollback {
            self.count_world("caller rollback");
            self.note(|| format!("a{actor} ends; its caller rolls back"));
        } else {
            self.db.commit(&conclusion.writes);
            let (report, writes) = (&conclusion.report, &conclusion.writes);
            let text = format!(
                "a{actor} commits: stale rows {:?}, deleted lines {:?}, rows {:?}; {}, errors {:?}",
                writes.stale_rows,
                writes.deleted_lines,
                writes.rows(),
                report.status().as_str(),
                report.error_lines()
            );
            self.note(|| text);
        }
        self.db.unlock(actor);
        self.counts.syncs += 1;
        self.counts.held += u64::from(conclusion.report.held.is_some());
        let calls = self.calls_this_sync.remove(&actor).unwrap_or(0);
        self.last_sync = Some((calls, wrote, conclusion));
        let state = &mut self.actors[actor];
        state.syncs_left -= 1;
        state.state = if state.syncs_left == 0 { ActorState::Finished } else { ActorState::Idle };
    }

    /// Delivers one call to Flex and its answer to its sync.
    fn deliver(&mut self, index: usize) -> Result<(), Violation> {
        let concurrent = self.in_flight.len();
        let call = self.in_flight.swap_remove(index);
        if call.orphaned {
            self.counts.flex_calls += 1;
            self.flex.calls += 1;
            let outcome = self.reach_flex(&call, concurrent)?;
            if let FlexCall::AddContact { resource, .. } = &call.call {
                if self.flex.contacts.last().is_some_and(|c| c.resource == *resource && c.origin == Origin::Sync) {
                    self.flex.contacts.last_mut().expect("just checked").origin = Origin::LateAdd;
                }
            }
            self.count_world("late call of a killed backend");
            self.note(|| format!("call {} of the killed a{} reaches Flex: {}", call.id, call.actor, outcome_text(&outcome)));
            return Ok(());
        }
        let ActorState::Running(sync) = &self.actors[call.actor].state else { unreachable!("calls belong to running syncs") };
        let rate_limited = sync.rate_limited;
        let outcome = if rate_limited {
            Outcome::Failure(Failure::new(ErrorCode::RateLimited, Some(429), false))
        } else {
            *self.calls_this_sync.entry(call.actor).or_default() += 1;
            self.counts.flex_calls += 1;
            self.flex.calls += 1;
            self.reach_flex(&call, concurrent)?
        };
        self.note(|| format!("deliver {} to a{}: {}", call.id, call.actor, outcome_text(&outcome)));
        if let Outcome::Failure(failure) = &outcome {
            if call.call.is_idempotent() && call.attempt < ATTEMPTS && failure.is_transient() {
                self.note(|| format!("the client sends {} again", call.id));
                self.in_flight.push(InFlight { attempt: call.attempt + 1, ..call });
                return Ok(());
            }
        }
        self.settle(&call, &outcome);
        if self.variant == Variant::BlindAddRetry
            && matches!(&outcome, Outcome::Failure(f) if f.ambiguous)
            && matches!(call.call, FlexCall::AddContact { .. })
        {
            let request = Request { tag: call.tag, call: call.call.clone(), role_after_add: call.role_after_add.clone() };
            self.decrement(call.actor);
            return self.send(call.actor, request, call.follow_up);
        }
        let follow = match (&call.call, &call.role_after_add, &outcome) {
            (FlexCall::AddContact { element, .. }, Some(role), Outcome::Success(body)) if !call.follow_up => {
                crate::flex_response::parse_added_line_id(body)
                    .map(|line| FlexCall::SetRole { element: element.clone(), line, role: role.clone() })
            }
            _ => None,
        };
        let actor = call.actor;
        {
            let ActorState::Running(sync) = &mut self.actors[actor].state else { unreachable!() };
            if matches!(&outcome, Outcome::Failure(f) if f.code == ErrorCode::RateLimited) {
                sync.rate_limited = true;
            }
            if call.tag == Tag::Listing && matches!(outcome, Outcome::Success(_)) {
                sync.contacts_listed = Some(self.flex.contacts.len());
            }
            if call.follow_up {
                if let Some(answer) = sync.answers.iter_mut().find(|a| a.tag == call.tag) {
                    answer.role = Some(outcome);
                }
            } else {
                sync.answers.push(Answer { tag: call.tag, outcome, role: None });
            }
        }
        self.decrement(actor);
        if let Some(role_call) = follow {
            self.send(actor, Request { tag: call.tag, call: role_call, role_after_add: None }, true)?;
        }
        Ok(())
    }

    fn decrement(&mut self, actor: usize) {
        if let ActorState::Running(sync) = &mut self.actors[actor].state {
            sync.outstanding -= 1;
        }
    }

    /// The call at Flex: the budget, the concurrency limit, a fault, or the call applied.
    fn reach_flex(&mut self, call: &InFlight, concurrent: usize) -> Result<Outcome, Violation> {
        if self.flex.calls > self.flex.budget {
            self.count_fault("429 budget");
            return Ok(Outcome::Failure(Failure::new(ErrorCode::RateLimited, Some(429), false)));
        }
        if self.chaos && concurrent > self.shape.concurrent_slots {
            self.count_fault("429 concurrent");
            return Ok(Outcome::Failure(Failure::new(ErrorCode::Http(429), Some(429), false)));
        }
        let fault = (self.chaos && self.rng.percent(self.shape.fault_percent)).then(|| *self.rng.pick(&FAULTS));
        let fault = fault.filter(|f| *f != Fault::AddWithoutLineId || matches!(call.call, FlexCall::AddContact { .. }));
        if let Some(fault) = fault {
            self.count_fault(fault.name());
            if fault.applies() {
                let _ = self.apply(call, fault != Fault::AddWithoutLineId)?;
            }
            return Ok(fault.outcome(&call.call));
        }
        Ok(match self.apply(call, true)? {
            Ok(body) => Outcome::Success(body),
            Err(status) => Outcome::Failure(Failure::new(ErrorCode::Http(status), Some(status), false)),
        })
    }

    /// Applies a call at Flex, checking that a delete removes only what the sync may.
    fn apply(&mut self, call: &InFlight, add_id: bool) -> Result<Result<Vec<u8>, u16>, Violation> {
        let doomed: Vec<String> = match &call.call {
            FlexCall::DeleteLine { line } => vec![line.clone()],
            FlexCall::DeleteLines { lines } if self.flex.bulk_delete => lines.clone(),
            _ => Vec::new(),
        };
        if self.shape.orphan_policy == OrphanPolicy::Keep {
            if let Some(line) = doomed.iter().find(|l| self.flex.contact(l).is_some() && !self.db.owns(l)) {
                let detail = format!("call {} deletes {line}, which the sync never owned", call.id);
                self.note(|| detail.clone());
                return Err(self.violation(Invariant::DeletedNotOwned, detail));
            }
        }
        Ok(self.flex.apply(&call.call, add_id))
    }

    /// An add's outcome is known when its answer says so; else it waits for a listing.
    fn settle(&mut self, call: &InFlight, outcome: &Outcome) {
        if matches!(call.call, FlexCall::ListCrew { .. }) && matches!(outcome, Outcome::Success(_)) {
            // A listing read shows what became of every add delivered before it.
            self.unsettled.retain(|u| !u.delivered);
        }
        let Some(at) = self.unsettled.iter().position(|u| u.call == call.id) else { return };
        let known = match outcome {
            Outcome::Success(body) => crate::flex_response::parse_added_line_id(body).is_some(),
            Outcome::Failure(f) => !f.ambiguous,
        };
        if known {
            self.unsettled.remove(at);
        } else {
            self.unsettled[at].delivered = true;
        }
    }

    fn count_fault(&mut self, name: &'static str) {
        *self.counts.faults.entry(name).or_default() += 1;
    }

    fn count_world(&mut self, name: &'static str) {
        *self.counts.world.entry(name).or_default() += 1;
    }

    fn world_event(&mut self) -> Result<(), Violation> {
        match self.rng.below(7) {
            0 | 1 => {
                let technician = self.technician();
                if self.db.assigned.remove(&technician).is_some() {
                    self.count_world("unassigned");
                    self.note(|| format!("world: {technician} unassigned"));
                } else {
                    let role = self.role_code();
                    self.count_world("assigned");
                    self.note(|| format!("world: {technician} assigned as {role:?}"));
                    self.db.assigned.insert(technician, role);
                }
            }
            2 => {
                let technician = self.technician();
                let role = self.role_code();
                if let Some(current) = self.db.assigned.get_mut(&technician) {
                    *current = role.clone();
                    self.count_world("role changed");
                    self.note(|| format!("world: {technician} now {role:?}"));
                }
            }
            3 => {
                let technician = self.technician();
                let line = self.flex.new_contact(&resource_of(&technician), Origin::Hand);
                self.count_world("hand add");
                self.note(|| format!("world: {line} for {technician} added by hand in Flex"));
            }
            4 if !self.flex.contacts.is_empty() => {
                let at = self.rng.below(self.flex.contacts.len());
                let gone = self.flex.contacts.remove(at);
                self.count_world("hand delete");
                self.note(|| format!("world: {} deleted by hand in Flex", gone.line));
            }
            5 if !self.flex.contacts.is_empty() => {
                let at = self.rng.below(self.flex.contacts.len());
                let role = self.rng.pick(&["ROLE-R", "ROLE-T", "ROLE-X"]).to_string();
                self.flex.contacts[at].role = Some(role.clone());
                let line = self.flex.contacts[at].line.clone();
                self.count_world("hand role");
                self.note(|| format!("world: {line} given {role} by hand in Flex"));
            }
            6 => self.kill()?,
            _ => {}
        }
        self.check_always()
    }

    /// A backend dies mid-sync: its calls already sent reach Flex or not, its transaction goes,
    /// its lock is released. A new backend takes up its remaining syncs.
    fn kill(&mut self) -> Result<(), Violation> {
        let running: Vec<usize> =
            (0..self.actors.len()).filter(|&a| matches!(self.actors[a].state, ActorState::Running(_))).collect();
        if running.is_empty() {
            return Ok(());
        }
        let actor = *self.rng.pick(&running);
        self.count_world("backend killed");
        self.note(|| format!("world: the backend of a{actor} is killed"));
        // Its calls never got out, or are on their way and may land at any later moment.
        let mine: Vec<u64> = self.in_flight.iter().filter(|c| c.actor == actor && !c.orphaned).map(|c| c.id).collect();
        for id in mine {
            self.unsettled.retain(|u| u.call != id);
            if self.rng.percent(50) {
                self.in_flight.retain(|c| c.id != id);
            } else if let Some(call) = self.in_flight.iter_mut().find(|c| c.id == id) {
                call.orphaned = true;
                self.note(|| format!("its call {id} is on its way to Flex"));
            }
        }
        self.db.unlock(actor);
        self.calls_this_sync.remove(&actor);
        let state = &mut self.actors[actor];
        state.syncs_left -= 1;
        state.state = if state.syncs_left == 0 { ActorState::Finished } else { ActorState::Idle };
        Ok(())
    }

    /// The invariants that hold after every event.
    fn check_always(&self) -> Result<(), Violation> {
        if let Some(technician) = self.db.technician_with_two_rows() {
            return Err(self.violation(Invariant::TwoRows, format!("{technician} has two rows")));
        }
        let mut made: BTreeMap<&str, &str> = BTreeMap::new();
        for contact in self.flex.contacts.iter().filter(|c| c.origin == Origin::Sync) {
            if let Some(first) = made.insert(&contact.resource, &contact.line) {
                return Err(self.violation(
                    Invariant::SecondContact,
                    format!("{} has contacts {first} and {} made by the sync", contact.resource, contact.line),
                ));
            }
        }
        Ok(())
    }

    /// I2: rows = desired set = Flex contacts, one contact per desired resource with its role;
    /// under `keep`, any other contact is one the sync does not own.
    fn check_converged(&self) -> Result<(), Violation> {
        let fail = |detail: String| Err(self.violation(Invariant::NotConverged, detail));
        let roles = role_map();
        if self.db.rows.len() != self.db.assigned.len() {
            return fail(format!("{} rows for {} desired technicians", self.db.rows.len(), self.db.assigned.len()));
        }
        for (technician, role_code) in &self.db.assigned {
            let resource = resource_of(technician);
            let Some((_, line)) = self.db.rows.iter().find(|(t, _)| t == technician) else {
                return fail(format!("{technician} has no row"));
            };
            let Some(contact) = self.flex.contact(line) else {
                return fail(format!("{technician}'s row points at {line}, which Flex does not hold"));
            };
            if contact.resource != resource {
                return fail(format!("{technician}'s row points at a contact of {}", contact.resource));
            }
            if let RoleTarget::Set(role) = roles.target("sound", role_code.as_deref()) {
                if contact.role.as_deref() != Some(role.as_str()) {
                    return fail(format!("{technician}'s contact has role {:?}, not {role}", contact.role));
                }
            }
        }
        for contact in &self.flex.contacts {
            let kept = self.db.rows.iter().any(|(_, l)| *l == contact.line);
            let may_stay = self.shape.orphan_policy == OrphanPolicy::Keep && !self.db.ever_owned.contains(&contact.line);
            if !kept && !may_stay {
                return fail(format!("Flex still holds {} for {}", contact.line, contact.resource));
            }
        }
        Ok(())
    }
}
