//! One `flex_sync_job` call: check the input, then per department (in the canonical order) lock,
//! read, list Flex once, plan with the pure core, act on Flex, and write only what Flex confirmed.
//! Flex failures are reported in the summary, never raised, so the rows that match what Flex did
//! are committed; only bad input and database errors raise.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flex_sync_core::endpoints::FlexCall;
use flex_sync_core::flex_response::{parse_added_line_id, parse_listing, CrewListing};
use flex_sync_core::input::{department_key, normalize_departments};
use flex_sync_core::plan::{plan, resolve_ambiguous_adds, Add, CrewState, DeleteReason};
use flex_sync_core::settings::{FlexOrigin, Options};
use serde_json::{json, Map, Value};

use crate::error::FlexSyncError;
use crate::flex_client::{Answer, FlexClient, Outcome, Request};
use crate::store::{self, LineRecord, LogEntry};

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
    store::authorize()?;
    let job = request.job.ok_or(FlexSyncError::NullJob)?;
    store::check_application_schema()?;
    let context = store::call_context(&job)?;
    // These keep the snapshot they took before the lock, so they would reconcile stale rows.
    if matches!(context.isolation.as_str(), "repeatable read" | "serializable") {
        return Err(FlexSyncError::IsolationLevel(context.isolation.to_uppercase()));
    }
    let departments = match &request.departments {
        Some(list) => {
            let candidates: Vec<String> = list.iter().flatten().map(|d| department_key(d)).collect();
            normalize_departments(list, &store::known_departments(&candidates)?)?
        }
        None => store::departments_with_crew_calls(&job)?,
    };
    if !context.job_exists {
        return Err(FlexSyncError::UnknownJob(job));
    }
    let client = configured_client(&context)?;
    let triggered_by = context.caller;

    let was_rate_limited = client.is_rate_limited();
    let mut summary = Map::new();
    let mut ok = true;
    for department in &departments {
        let result = sync_department(&client, &job, department, request.wait_for_lock, &triggered_by, wait)?;
        ok &= !matches!(result.get("status").and_then(Value::as_str), Some("failed" | "partial"));
        summary.insert(department.clone(), result);
    }
    if client.is_rate_limited() && !was_rate_limited {
        store::note_rate_limited()?;
    }
    Ok(json!({"ok": ok, "job_id": job, "summary": summary}))
}

fn configured_client(context: &store::CallContext) -> Result<FlexClient> {
    let settings = store::load_settings()?.ok_or(FlexSyncError::NotConfigured)?;
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

/// The per-department report, built as the sync goes and turned into the summary and log row.
#[derive(Default)]
struct Report {
    added: usize,
    removed: usize,
    kept: usize,
    roles_set: usize,
    failed_adds: usize,
    adopted: usize,
    stale_removed: usize,
    duplicates_removed: usize,
    orphans_removed: usize,
    desired_count: usize,
    current_count: usize,
    errors: Vec<String>,
    diagnostics: Vec<String>,
    note: Option<&'static str>,
}

impl Report {
    fn error(&mut self, code: &str, what: String) {
        self.errors.push(format!("{code}: {what}"));
    }

    fn status(&self, listed: bool) -> &'static str {
        match (self.note, listed, self.errors.is_empty()) {
            (Some(_), _, _) => "skipped",
            (None, false, _) => "failed",
            (None, true, true) => "ok",
            (None, true, false) => "partial",
        }
    }
}

fn sync_department(
    client: &FlexClient,
    job: &str,
    department: &str,
    wait_for_lock: bool,
    triggered_by: &str,
    wait: &dyn Fn(),
) -> Result<Value> {
    let started = Instant::now();
    let calls_before = client.calls_made();
    let waited_before = client.time_waited();
    let mut report = Report::default();
    let locked = store::lock_department(job, department, wait_for_lock)?;
    let lock_wait = started.elapsed();
    let listed = if !locked {
        report.note = Some("another sync of this crew call is running");
        false
    } else {
        // Read after the lock: a concurrent sync that held it has committed by now.
        match store::load_crew(job, department)? {
            None => {
                report.note = Some("no crew call mapping");
                false
            }
            Some(crew) => reconcile(client, &crew, department, &mut report, wait)?,
        }
    };
    let flex_calls = client.calls_made() - calls_before;
    let status = report.status(listed);
    let duration_ms = started.elapsed().as_millis() as i32;
    // Everything but waiting for the lock and for Flex: the database-side cost of the sync.
    let own_work_us = started.elapsed().saturating_sub(lock_wait + (client.time_waited() - waited_before)).as_micros() as u64;
    let mut summary = json!({
        "status": status,
        "added": report.added,
        "removed": report.removed,
        "kept": report.kept,
        "rolesSet": report.roles_set,
        "failedAdds": report.failed_adds,
        "desired_count": report.desired_count,
        "current_count": report.current_count,
        "adopted": report.adopted,
        "stale_removed": report.stale_removed,
        "duplicates_removed": report.duplicates_removed,
        "orphans_removed": report.orphans_removed,
        "flex_calls": flex_calls,
        "duration_ms": duration_ms,
        // How long this call waited for another sync of the crew call (a queue run, another click).
        "lock_wait_ms": lock_wait.as_millis() as u64,
        "own_work_us": own_work_us,
        "errors": report.errors,
        "business_role_diagnostics": report.diagnostics,
    });
    if let Some(note) = report.note {
        summary["note"] = json!(note);
    }
    store::insert_log(LogEntry {
        job,
        department,
        duration_ms,
        counts: [
            report.added as i32,
            report.removed as i32,
            report.kept as i32,
            report.roles_set as i32,
            report.errors.len() as i32,
            flex_calls as i32,
        ],
        status,
        errors: json!(report.errors),
        summary: summary.clone(),
        triggered_by,
    })?;
    Ok(summary)
}

/// Lists, plans and acts for one crew call; returns false when the listing failed, in which case
/// nothing was changed in Flex or in the database.
fn reconcile(
    client: &FlexClient,
    crew: &store::StoredCrew,
    department: &str,
    report: &mut Report,
    wait: &dyn Fn(),
) -> Result<bool> {
    let element = crew.flex_element_id.as_str();
    report.desired_count = crew.desired.len();
    report.current_count = crew.rows.len();

    let listing = match list_crew(client, element, wait) {
        Ok(listing) => listing,
        Err(code) => {
            report.error(&code, "listing the crew call failed; nothing was changed".to_string());
            return Ok(false);
        }
    };
    let plan = plan(&CrewState {
        department,
        desired: &crew.desired,
        rows: &crew.rows,
        listing: &listing,
        known: &crew.known,
        roles: &crew.roles,
        orphan_policy: client.options().orphan_policy,
    });
    report.diagnostics = plan.diagnostics.clone();
    report.kept = plan.kept;
    report.adopted = plan.adoptions.len();
    report.stale_removed = plan.stale_rows.len();

    // The database first catches up with what Flex already holds.
    store::delete_rows_of_technicians(&crew.id, &plan.stale_rows)?;
    let adopted_rows: Vec<(String, String)> =
        plan.adoptions.iter().map(|a| (a.technician_id.clone(), a.line_id.clone())).collect();
    store::upsert_rows(&crew.id, &adopted_rows)?;

    // Then Flex: adds (each with its role), deletes and role changes of kept contacts are
    // independent of each other and share one pool of workers.
    let mut batch: Vec<Request> = plan
        .adds
        .iter()
        .map(|a| Request {
            call: FlexCall::AddContact { element: element.to_string(), resource: a.resource_id.clone() },
            role_after_add: a.role_id.clone(),
        })
        .collect();
    let delete_lines: Vec<String> = plan.deletes.iter().map(|d| d.line_id.clone()).collect();
    let delete_calls = delete_calls(&delete_lines);
    let delete_call_count = delete_calls.len();
    let role_calls = plan.role_sets.iter().map(|r| FlexCall::SetRole {
        element: element.to_string(),
        line: r.line_id.clone(),
        role: r.role_id.clone(),
    });
    batch.extend(delete_calls.into_iter().chain(role_calls).map(|call| Request { call, role_after_add: None }));
    let mut answers = client.send_all(batch, wait).into_iter();
    let add_answers: Vec<Answer> = answers.by_ref().take(plan.adds.len()).collect();
    let delete_outcomes: Vec<Outcome> = answers.by_ref().take(delete_call_count).map(|a| a.outcome).collect();
    let role_outcomes: Vec<Outcome> = answers.map(|a| a.outcome).collect();
    let delete_outcomes = per_line_delete_outcomes(client, &delete_lines, delete_outcomes, wait);

    let mut claimed: HashSet<String> = listing.contacts.iter().map(|c| c.line_id.clone()).collect();
    let added = settle_adds(client, element, &plan.adds, add_answers, &mut claimed, report, wait);
    let added = set_missing_roles(client, element, added, wait);

    let mut deleted = Vec::new();
    for (delete, outcome) in plan.deletes.iter().zip(delete_outcomes) {
        match outcome {
            Outcome::Success(_) => deleted.push(delete.line_id.clone()),
            // Already gone is what we wanted.
            Outcome::Failure(f) if f.status == Some(404) => deleted.push(delete.line_id.clone()),
            Outcome::Failure(f) => report.error(&f.code, format!("delete of line {} failed", delete.line_id)),
        }
        if deleted.last() == Some(&delete.line_id) {
            report.removed += 1;
            match delete.reason {
                DeleteReason::Duplicate => report.duplicates_removed += 1,
                DeleteReason::Orphan => report.orphans_removed += 1,
                DeleteReason::NotDesired => {}
            }
        }
    }

    let mut records: Vec<LineRecord> = Vec::new();
    for (role, outcome) in plan.role_sets.iter().zip(role_outcomes) {
        if role_applied(report, &outcome, format!("business role of line {} not set", role.line_id)) {
            records.push(LineRecord {
                line_id: role.line_id.clone(),
                resource_id: role.resource_id.clone(),
                created_by_sync: false,
                applied_role: Some(role.role_id.clone()),
            });
        }
    }
    for new in &added {
        let applied = new.role.as_ref().is_some_and(|outcome| {
            role_applied(report, outcome, format!("business role of tech {} not set", new.add.technician_id))
        });
        records.push(LineRecord {
            line_id: new.line.clone(),
            resource_id: new.add.resource_id.clone(),
            created_by_sync: true,
            applied_role: if applied { new.add.role_id.clone() } else { None },
        });
    }
    report.added = added.len();

    // Finally the database records exactly what Flex confirmed.
    store::delete_rows_of_lines(&crew.id, &deleted)?;
    let added_rows: Vec<(String, String)> =
        added.iter().map(|new| (new.add.technician_id.clone(), new.line.clone())).collect();
    store::upsert_rows(&crew.id, &added_rows)?;
    store::forget_lines(&deleted)?;
    store::record_lines(element, &records)?;
    Ok(true)
}

/// A contact Flex confirmed adding, and what became of its role, if one was sent.
struct Added<'a> {
    add: &'a Add,
    line: String,
    role: Option<Outcome>,
}

fn role_applied(report: &mut Report, outcome: &Outcome, what: String) -> bool {
    match outcome {
        Outcome::Success(_) => {
            report.roles_set += 1;
            true
        }
        Outcome::Failure(f) => {
            report.error(&f.code, what);
            false
        }
    }
}

/// Adds confirmed only through a second listing had no role sent with them: send those now.
fn set_missing_roles<'a>(client: &FlexClient, element: &str, mut added: Vec<Added<'a>>, wait: &dyn Fn()) -> Vec<Added<'a>> {
    let missing: Vec<usize> =
        (0..added.len()).filter(|&i| added[i].add.role_id.is_some() && added[i].role.is_none()).collect();
    let calls = missing
        .iter()
        .map(|&i| FlexCall::SetRole {
            element: element.to_string(),
            line: added[i].line.clone(),
            role: added[i].add.role_id.clone().unwrap_or_default(),
        })
        .collect();
    for (i, outcome) in missing.into_iter().zip(client.call_all(calls, wait)) {
        added[i].role = Some(outcome);
    }
    added
}

/// One bulk delete for several lines (C6), a single delete (C5) for one.
fn delete_calls(lines: &[String]) -> Vec<FlexCall> {
    match lines {
        [] => Vec::new(),
        [line] => vec![FlexCall::DeleteLine { line: line.clone() }],
        _ => vec![FlexCall::DeleteLines { lines: lines.to_vec() }],
    }
}

/// The outcome for each line. Bulk delete is undocumented (flex-api.md section 6, item 7): when
/// the tenant refuses it as a request (a 4xx other than auth and rate limits), every line is sent
/// again as a single delete.
fn per_line_delete_outcomes(client: &FlexClient, lines: &[String], outcomes: Vec<Outcome>, wait: &dyn Fn()) -> Vec<Outcome> {
    if lines.len() < 2 {
        return outcomes;
    }
    match outcomes.into_iter().next() {
        Some(Outcome::Failure(f)) if f.status.is_some_and(|s| (400..500).contains(&s) && ![401, 403, 429].contains(&s)) => {
            client.call_all(lines.iter().map(|l| FlexCall::DeleteLine { line: l.clone() }).collect(), wait)
        }
        Some(outcome) => vec![outcome; lines.len()],
        None => Vec::new(),
    }
}

/// The crew call's listing, or the error code why there is none.
fn list_crew(client: &FlexClient, element: &str, wait: &dyn Fn()) -> std::result::Result<CrewListing, String> {
    match client.call(FlexCall::ListCrew { element: element.to_string() }, wait) {
        Outcome::Success(body) => parse_listing(&body).map_err(|_| "flex_bad_listing".to_string()),
        Outcome::Failure(f) => Err(f.code),
    }
}

/// Turns add answers into confirmed contacts. Adds whose outcome is unknown are looked up in
/// one fresh listing before any of them is sent again, so no resource gets a second contact.
fn settle_adds<'a>(
    client: &FlexClient,
    element: &str,
    adds: &'a [Add],
    answers: Vec<Answer>,
    claimed: &mut HashSet<String>,
    report: &mut Report,
    wait: &dyn Fn(),
) -> Vec<Added<'a>> {
    let mut added = Vec::new();
    let mut ambiguous: Vec<&Add> = Vec::new();
    for (add, answer) in adds.iter().zip(answers) {
        match answer.outcome {
            Outcome::Success(body) => match parse_added_line_id(&body) {
                Some(line) => {
                    claimed.insert(line.clone());
                    added.push(Added { add, line, role: answer.role });
                }
                None => ambiguous.push(add),
            },
            Outcome::Failure(f) if f.ambiguous => ambiguous.push(add),
            Outcome::Failure(f) => {
                report.failed_adds += 1;
                report.error(&f.code, format!("add failed for tech {}", add.technician_id));
            }
        }
    }
    if ambiguous.is_empty() {
        return added;
    }
    let Ok(listing) = list_crew(client, element, wait) else {
        for add in ambiguous {
            report.failed_adds += 1;
            report.error(
                "flex_add_unconfirmed",
                format!("add for tech {} may or may not have applied; the next sync adopts it if it did", add.technician_id),
            );
        }
        return added;
    };
    let found = resolve_ambiguous_adds(&ambiguous, &listing, claimed);
    let mut retry: Vec<&Add> = Vec::new();
    for (add, line) in ambiguous.into_iter().zip(found) {
        match line {
            Some(line) => {
                claimed.insert(line.clone());
                added.push(Added { add, line, role: None });
            }
            None => retry.push(add),
        }
    }
    // Flex did not apply these: one more add each is safe. Its answer is trusted only with an id.
    let requests = retry
        .iter()
        .map(|a| Request {
            call: FlexCall::AddContact { element: element.to_string(), resource: a.resource_id.clone() },
            role_after_add: a.role_id.clone(),
        })
        .collect();
    for (add, answer) in retry.into_iter().zip(client.send_all(requests, wait)) {
        let line = match &answer.outcome {
            Outcome::Success(body) => parse_added_line_id(body),
            Outcome::Failure(_) => None,
        };
        match (line, answer.outcome) {
            (Some(line), _) => added.push(Added { add, line, role: answer.role }),
            (None, Outcome::Failure(f)) => {
                report.failed_adds += 1;
                report.error(&f.code, format!("add failed for tech {}", add.technician_id));
            }
            (None, Outcome::Success(_)) => {
                report.failed_adds += 1;
                report.error(
                    "flex_add_unconfirmed",
                    format!("add for tech {} returned no line id; the next sync adopts it", add.technician_id),
                );
            }
        }
    }
    added
}
