//! One `flex_sync_job` call: check the input, then per department (in the canonical order) lock,
//! read, run the calls the pure core's protocol asks for, write what it concludes, log. Flex
//! failures are reported in the summary, never raised, so the rows that match what Flex did are
//! committed; only bad input and database errors raise.

use std::time::{Duration, Instant};

use flex_sync_core::input::{known_departments, names_to_look_up, normalize_departments};
use flex_sync_core::protocol::{Conclusion, Measured, Reconcile, Report, Skip, Status, Step, Writes};
use flex_sync_core::settings::{FlexOrigin, Options};
use serde_json::{json, Map, Value};

use crate::error::FlexSyncError;
use crate::flex_client::FlexClient;
use crate::store::{self, LogEntry};

type Result<T> = std::result::Result<T, FlexSyncError>;

/// Time kept back from `statement_timeout` for the database writes after the last Flex call.
const WRITE_MARGIN: Duration = Duration::from_millis(300);

pub struct SyncRequest {
    pub job: Option<String>,
    pub departments: Option<Vec<Option<String>>>,
    pub wait_for_lock: bool,
}

pub fn sync_job(request: SyncRequest, wait: &dyn Fn()) -> Result<Value> {
    // Everything that can reject the call happens before the first Flex request (I5).
    store::check_call(request.job.is_some())?;
    let job = request.job.ok_or(FlexSyncError::NullJob)?;
    let context = store::call_context(&job)?;
    // These keep the snapshot they took before the lock, so they would reconcile stale rows.
    if matches!(context.isolation.as_str(), "repeatable read" | "serializable") {
        return Err(FlexSyncError::IsolationLevel(context.isolation.to_uppercase()));
    }
    let departments = match &request.departments {
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
    let client = configured_client(&context)?;

    let was_rate_limited = client.is_rate_limited();
    let mut summary = Map::new();
    let mut ok = true;
    for department in &departments {
        let report = sync_department(&client, &job, department, request.wait_for_lock, &context.caller, wait)?;
        ok &= report.0.is_clean();
        summary.insert(department.clone(), report.1);
    }
    if client.is_rate_limited() && !was_rate_limited {
        store::note_rate_limited()?;
    }
    Ok(json!({"ok": ok, "job_id": job, "summary": summary}))
}

fn configured_client(context: &store::CallContext) -> Result<FlexClient> {
    let settings = store::settings()?.ok_or(FlexSyncError::NotConfigured)?;
    let options = Options::default().merged(&settings.options)?;
    let origin = FlexOrigin::parse(&settings.base_url, options.allow_insecure_loopback)?;
    let token = settings.api_token.filter(|t| !t.is_empty()).ok_or_else(|| match &options.api_token_vault_secret {
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
    client: &FlexClient,
    job: &str,
    department: &str,
    wait_for_lock: bool,
    triggered_by: &str,
    wait: &dyn Fn(),
) -> Result<(Status, Value)> {
    let started = Instant::now();
    let calls_before = client.calls_made();
    let waited_before = client.time_waited();
    let locked = store::lock_department(job, department, wait_for_lock)?;
    let lock_wait = started.elapsed();
    // Read after the lock: a concurrent sync that held it has committed by now.
    let crew = if locked { store::load_crew(job, department, client.options().orphan_policy)? } else { None };
    let (report, writes, crew) = match crew {
        None => (Report::skipped(if locked { Skip::NoCrewCall } else { Skip::Busy }), Writes::default(), None),
        Some(crew) => {
            let element = crew.input.flex_element_id.clone();
            let conclusion = run_protocol(client, Reconcile::new(crew.input), wait);
            (conclusion.report, conclusion.writes, Some((crew.id, element)))
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
    let (crew_call, element) = crew.unzip();
    store::write_outcome(crew_call.as_deref(), element.as_deref(), &writes, log)?;
    Ok((report.status(), summary))
}

/// Runs the calls the protocol asks for and feeds their answers back until it is done.
fn run_protocol(client: &FlexClient, mut protocol: Reconcile, wait: &dyn Fn()) -> Conclusion {
    let mut answers = Vec::new();
    loop {
        match protocol.step(answers) {
            Step::Send(requests) => answers = client.send_all(requests, wait),
            Step::Done(conclusion) => return *conclusion,
        }
    }
}
