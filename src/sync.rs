//! One `flex_sync_job` call: check the input, then per department (in the canonical order) lock,
//! read, run the calls the pure core's protocol asks for, write what it concludes, log. Flex
//! failures are reported in the summary, never raised, so the rows that match what Flex did are
//! committed; only bad input and database errors raise. `flex_sync_plan` makes the same checks
//! and takes the same locks, then lists and writes nothing; `flex_sync_drift` lists crew calls
//! and records what it found.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flex_sync_core::input::{known_departments, names_to_look_up, normalize_departments};
use flex_sync_core::guard::Guard;
use flex_sync_core::protocol::{self, Conclusion, ErrorCode, Measured, Reconcile, Report, Skip, Status, Step, Writes};
use flex_sync_core::settings::{FlexOrigin, Options};
use serde_json::{json, Map, Value};

use crate::error::FlexSyncError;
use crate::flex_client::{FlexClient, InFlight};
use crate::store::{self, LogEntry};

type Result<T> = std::result::Result<T, FlexSyncError>;

/// Time kept back from `statement_timeout` for the database writes after the last Flex call.
const WRITE_MARGIN: Duration = Duration::from_millis(300);

pub struct SyncRequest {
    pub job: Option<String>,
    pub departments: Option<Vec<Option<String>>>,
    pub wait_for_lock: bool,
    /// Apply the deletes the guard would hold.
    pub force: bool,
}

/// A call whose input passed every check: the job, its departments in lock order, their Flex
/// elements as read before the lock, the caller and the Flex client.
struct CheckedCall {
    job: String,
    departments: Vec<String>,
    elements: HashMap<String, String>,
    caller: String,
    client: FlexClient,
}

/// Everything that can reject a sync or a plan, before the first Flex request (I5).
fn check_job_call(job: Option<String>, departments: &Option<Vec<Option<String>>>) -> Result<CheckedCall> {
    store::check_call(job.is_some())?;
    let job = job.ok_or(FlexSyncError::NullJob)?;
    let context = call_context(Some(&job))?;
    let departments = match departments {
        Some(list) => {
            let in_use = match names_to_look_up(list, &context.departments) {
                names if names.is_empty() => Vec::new(),
                names => store::departments_in_use(names)?,
            };
            normalize_departments(list, &known_departments(&context.departments, in_use))?
        }
        None => context.departments.clone(),
    };
    if !context.job_exists {
        return Err(FlexSyncError::UnknownJob(job));
    }
    let client = configured_client(&context, |options| options)?;
    Ok(CheckedCall { job, departments, elements: context.elements, caller: context.caller, client })
}

/// What a call checks its input against, refused in an isolation that keeps the snapshot taken
/// before the lock (it would reconcile stale rows).
fn call_context(job: Option<&str>) -> Result<store::CallContext> {
    let context = store::call_context(job)?;
    match context.isolation.as_str() {
        "repeatable read" | "serializable" => Err(FlexSyncError::IsolationLevel(context.isolation.to_uppercase())),
        _ => Ok(context),
    }
}

pub fn sync_job(request: SyncRequest, wait: &dyn Fn()) -> Result<Value> {
    let call = check_job_call(request.job, &request.departments)?;
    let was_rate_limited = call.client.is_rate_limited();
    let mut summary = Map::new();
    let mut ok = true;
    for department in &call.departments {
        let (status, entry) = sync_department(&call, department, request.wait_for_lock, request.force, wait)?;
        ok &= status.is_clean();
        summary.insert(department.clone(), entry);
    }
    note_rate_limit(&call.client, was_rate_limited)?;
    Ok(json!({"ok": ok, "job_id": call.job, "summary": summary}))
}

fn note_rate_limit(client: &FlexClient, was_rate_limited: bool) -> Result<()> {
    if client.is_rate_limited() && !was_rate_limited {
        store::note_rate_limited()?;
    }
    Ok(())
}

/// What a sync would do now, per department: the same checks and locks, one listing each,
/// nothing written.
pub fn plan_job(job: Option<String>, departments: Option<Vec<Option<String>>>, wait: &dyn Fn()) -> Result<Value> {
    let call = check_job_call(job, &departments)?;
    let was_rate_limited = call.client.is_rate_limited();
    let mut summary = Map::new();
    for department in &call.departments {
        store::lock_department(&call.job, department, true)?;
        // Listed after the read, not ahead of it: a preview makes one listing, whatever happened
        // to the crew call while it waited for the lock.
        let entry = match load(&call.client, &call.job, department, false)? {
            None => Report::skipped(Skip::NoCrewCall).summary(Measured::default()),
            Some(crew) => {
                let listing = list(&call.client, &crew.input, wait);
                protocol::preview(&crew.input, listing)
            }
        };
        summary.insert(department.clone(), entry);
    }
    note_rate_limit(&call.client, was_rate_limited)?;
    Ok(json!({"job_id": call.job, "plan": summary}))
}

impl CheckedCall {
    /// Sends the listing of the department's crew call as soon as its lock is held, so that Flex
    /// answers while the crew is read (its element may have changed before the lock: the answer
    /// is then not used and the element read under the lock is listed).
    fn list_ahead(&self, department: &str) -> Option<InFlight> {
        let element = self.elements.get(department)?;
        Some(self.client.start(vec![protocol::listing_request(element)]))
    }
}

/// The answers to `requests`: those of the requests in flight when they are the same, else sent
/// now. Answers in flight for other requests are dropped.
fn answers_to(client: &FlexClient, requests: Vec<protocol::Request>, in_flight: Option<InFlight>, wait: &dyn Fn()) -> Vec<protocol::Answer> {
    match in_flight {
        Some(in_flight) if in_flight.is_for(&requests) => client.collect(in_flight, wait),
        _ => client.send_all(requests, wait),
    }
}

/// The answer to the crew call's one listing (send_all answers every request, a lost one too).
fn list(client: &FlexClient, input: &protocol::CrewInput, wait: &dyn Fn()) -> protocol::Outcome {
    client.send_all(vec![protocol::listing_request(&input.flex_element_id)], wait).remove(0).outcome
}

/// The crew call as the protocol takes it, with the options the client runs with.
fn load(client: &FlexClient, job: &str, department: &str, force: bool) -> Result<Option<store::StoredCrew>> {
    let guard = Guard { max_delete_permille: client.options().max_delete_permille, force };
    store::load_crew(job, department, client.options().orphan_policy, guard)
}

/// The most crew calls one drift check may list.
pub const MAX_DRIFT_CREW_CALLS: i32 = 1_000;

/// Lists up to `max_crew_calls` crew calls in the order of `crew_calls_to_check()`, one call
/// each (the client's call budget is `max_crew_calls`, retries included; its deadline
/// `sync_deadline_ms` per crew call, at most an hour), and records what disagrees. A crew call a
/// sync holds is passed over, and so is every crew call after the budget, the deadline or Flex's
/// hourly budget ran out: they are not recorded, and come first next time.
pub fn drift_check(max_crew_calls: Option<i32>, wait: &dyn Fn()) -> Result<Value> {
    store::check_call(true)?;
    let max_crew_calls = match max_crew_calls {
        Some(n) if (1..=MAX_DRIFT_CREW_CALLS).contains(&n) => n,
        other => return Err(FlexSyncError::BadCrewCallCount(other.map_or("NULL".into(), |n| n.to_string()))),
    };
    let context = call_context(None)?;
    let checks = max_crew_calls as u64;
    let client = configured_client(&context, |options| Options {
        max_calls_per_sync: options.max_calls_per_sync.min(checks),
        sync_deadline_ms: options.sync_deadline_ms.saturating_mul(checks).min(MAX_DRIFT_DEADLINE_MS),
        ..options
    })?;
    store::forget_gone_drift_checks()?;
    let was_rate_limited = client.is_rate_limited();
    let (mut checked, mut busy, mut unchecked, mut stopped) = (0, 0, 0, false);
    let mut drifted = Vec::new();
    for candidate in store::drift_candidates(max_crew_calls)? {
        stopped |= client.calls_made() >= client.options().max_calls_per_sync || client.is_rate_limited();
        if stopped {
            unchecked += 1;
            continue;
        }
        if store::crew_call_is_busy(&candidate.job_id, &candidate.department)? {
            busy += 1;
            continue;
        }
        let Some(crew) = load(&client, &candidate.job_id, &candidate.department, false)? else {
            continue;
        };
        let result = match protocol::drift(&crew.input, list(&client, &crew.input, wait)) {
            Err(ErrorCode::CallBudget | ErrorCode::Deadline | ErrorCode::RateLimited) => {
                stopped = true;
                unchecked += 1;
                continue;
            }
            Err(code) => json!({"error": format!("{code}: listing the crew call failed")}),
            Ok(found) => found,
        };
        let in_sync = result.get("in_sync").and_then(Value::as_bool);
        store::record_drift(&crew.id, &candidate.job_id, &candidate.department, in_sync, &result)?;
        checked += 1;
        if in_sync != Some(true) {
            drifted.push(json!({"crew_call_id": crew.id, "job_id": candidate.job_id, "department": candidate.department, "drift": result}));
        }
    }
    note_rate_limit(&client, was_rate_limited)?;
    Ok(json!({
        "checked": checked,
        "drifted": drifted,
        "busy": busy,
        "unchecked": unchecked,
        "flex_calls": client.calls_made(),
        "rate_limited": client.is_rate_limited(),
    }))
}

/// The longest a drift check may call Flex: the longest `sync_deadline_ms` allows.
const MAX_DRIFT_DEADLINE_MS: u64 = 3_600_000;

fn configured_client(context: &store::CallContext, adjust: impl FnOnce(Options) -> Options) -> Result<FlexClient> {
    let settings = context.settings.as_ref().ok_or(FlexSyncError::NotConfigured)?;
    let options = adjust(Options::default().merged(&settings.options)?);
    let origin = FlexOrigin::parse(&settings.base_url, options.allow_insecure_loopback)?;
    let token = settings.api_token.clone().filter(|t| !t.is_empty()).ok_or_else(|| match &options.api_token_vault_secret {
        Some(secret) => FlexSyncError::VaultSecretMissing(secret.clone()),
        None => FlexSyncError::NoToken,
    })?;
    let mut budget = Duration::from_millis(options.sync_deadline_ms);
    if let Some(left) = context.time_left_ms {
        budget = budget.min(Duration::from_millis(left.max(0) as u64).saturating_sub(WRITE_MARGIN));
    }
    Ok(FlexClient::new(origin, token, options, Instant::now() + budget, context.rate_limited))
}

/// One department: its status and its summary.
fn sync_department(
    call: &CheckedCall,
    department: &str,
    wait_for_lock: bool,
    force: bool,
    wait: &dyn Fn(),
) -> Result<(Status, Value)> {
    let (client, job, triggered_by) = (&call.client, call.job.as_str(), call.caller.as_str());
    let started = Instant::now();
    let calls_before = client.calls_made();
    let waited_before = client.time_waited();
    let locked = store::lock_department(job, department, wait_for_lock)?;
    let lock_wait = started.elapsed();
    let listing = if locked { call.list_ahead(department) } else { None };
    // Read after the lock: a concurrent sync that held it has committed by now.
    let crew = if locked { load(client, job, department, force)? } else { None };
    let (report, writes, crew) = match crew {
        None => (Report::skipped(if locked { Skip::NoCrewCall } else { Skip::Busy }), Writes::default(), None),
        Some(crew) => {
            let element = crew.input.flex_element_id.clone();
            let conclusion = run_protocol(client, Reconcile::new(crew.input), listing, wait);
            (conclusion.report, conclusion.writes, Some((crew.id, element, crew.held)))
        }
    };
    let measured = Measured {
        flex_calls: client.calls_made() - calls_before,
        duration_ms: started.elapsed().as_millis() as u64,
        lock_wait_ms: lock_wait.as_millis() as u64,
        own_work_us: started.elapsed().saturating_sub(lock_wait + (client.time_waited() - waited_before)).as_micros() as u64,
    };
    let summary = report.summary(measured);
    let log = LogEntry {
        job,
        department,
        duration_ms: measured.duration_ms as i32,
        counts: [
            report.added as i32,
            report.removed as i32,
            report.kept as i32,
            report.roles_set as i32,
            report.errors.len() as i32,
            measured.flex_calls as i32,
        ],
        status: report.status().as_str(),
        errors: json!(report.error_lines()),
        summary: summary.clone(),
        triggered_by,
    };
    let crew = crew.as_ref().map(|(id, element, held)| store::OutcomeCrew { id, element, held: *held });
    store::write_outcome(crew, &writes, log)?;
    Ok((report.status(), summary))
}

/// Runs the calls the protocol asks for and feeds their answers back until it is done; the
/// listing sent ahead answers its first step when that asks for it.
fn run_protocol(client: &FlexClient, mut protocol: Reconcile, mut listing: Option<InFlight>, wait: &dyn Fn()) -> Conclusion {
    let mut answers = Vec::new();
    loop {
        match protocol.step(answers) {
            Step::Send(requests) => answers = answers_to(client, requests, listing.take(), wait),
            Step::Done(conclusion) => return *conclusion,
        }
    }
}
