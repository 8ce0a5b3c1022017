//! The sync of one crew call as a state machine without I/O. It is given what the database holds
//! ([`CrewInput`]), asks for Flex calls ([`Step::Send`]), is fed their answers, tagged by what
//! they answer, and ends with the writes that record exactly what Flex confirmed and the report
//! ([`Step::Done`]). The caller runs the calls and the writes and decides nothing.
//!
//! The order: one listing (a failed one ends the sync with nothing changed); the plan; adds (each
//! with its role), deletes and role changes together; a bulk delete the tenant refuses is sent
//! again line by line; adds whose outcome is unknown are looked up in one more listing before any
//! is sent again, so no resource gets a second contact; adds confirmed only by that listing get
//! their role last.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde_json::{json, Value};

use crate::endpoints::FlexCall;
use crate::flex_response::{parse_added_line_id, parse_listing, CrewListing};
use crate::guard::{reason_name, Guard, Held};
use crate::plan::{plan, resolve_ambiguous_adds, Add, CrewState, DbRow, DeleteReason, DesiredTech, KnownLine, OrphanPolicy, Plan};
use crate::roles::RoleMap;

/// Why a Flex call failed, as summaries, the log and the queue name it. The strings are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Timeout,
    ConnectTimeout,
    Connection,
    HostNotFound,
    DestinationRefused,
    /// Any other HTTP status Flex answered with.
    Http(u16),
    RateLimited,
    Unauthorized,
    RedirectRefused,
    CallBudget,
    Deadline,
    ResponseTooLarge,
    BadListing,
    BadResponse,
    ErrorInBody,
    AddUnconfirmed,
    WorkerLost,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::Http(status) => return write!(f, "flex_http_{status}"),
            ErrorCode::Timeout => "flex_timeout",
            ErrorCode::ConnectTimeout => "flex_connect_timeout",
            ErrorCode::Connection => "flex_connection",
            ErrorCode::HostNotFound => "flex_host_not_found",
            ErrorCode::DestinationRefused => "flex_destination_refused",
            ErrorCode::RateLimited => "flex_rate_limited",
            ErrorCode::Unauthorized => "flex_unauthorized",
            ErrorCode::RedirectRefused => "flex_redirect_refused",
            ErrorCode::CallBudget => "flex_call_budget",
            ErrorCode::Deadline => "flex_deadline",
            ErrorCode::ResponseTooLarge => "flex_response_too_large",
            ErrorCode::BadListing => "flex_bad_listing",
            ErrorCode::BadResponse => "flex_bad_response",
            ErrorCode::ErrorInBody => "flex_error_in_body",
            ErrorCode::AddUnconfirmed => "flex_add_unconfirmed",
            ErrorCode::WorkerLost => "flex_worker_lost",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub status: Option<u16>,
    /// True when Flex may have applied the call although no success came back.
    pub ambiguous: bool,
}

impl Failure {
    pub fn new(code: ErrorCode, status: Option<u16>, ambiguous: bool) -> Failure {
        Failure { code, status, ambiguous }
    }

    /// Whether the client sends an idempotent call again after this failure (with backoff, up
    /// to `retry_max_attempts`): a timeout, a lost connection, a 429 or a 5xx that may pass.
    pub fn is_transient(&self) -> bool {
        self.code == ErrorCode::Timeout
            || self.code == ErrorCode::Connection
            || matches!(self.status, Some(429 | 500 | 502 | 503 | 504))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer with its body.
    Success(Vec<u8>),
    Failure(Failure),
}

/// What a call answers. Indices are positions in the plan's adds, deletes and role changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    Listing,
    Add(usize),
    /// One bulk delete of every planned delete.
    Deletes,
    Delete(usize),
    SetRole(usize),
    /// The listing that settles adds whose outcome is unknown.
    Relisting,
    /// The one more add of a resource the relisting showed Flex did not add.
    AddAgain(usize),
    /// The role of an add the relisting confirmed (its add went without one).
    RoleOfAdd(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tag: Tag,
    pub call: FlexCall,
    /// A business role to set on the new line as soon as Flex answers the add with its id.
    pub role_after_add: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub tag: Tag,
    pub outcome: Outcome,
    /// The outcome of the follow-up role call, when one was sent.
    pub role: Option<Outcome>,
}

/// Everything the sync of one crew call needs from the database, read under its lock.
#[derive(Debug, Clone, Default)]
pub struct CrewInput {
    pub department: String,
    pub flex_element_id: String,
    pub desired: Vec<DesiredTech>,
    pub rows: Vec<DbRow>,
    pub known: std::collections::HashMap<String, KnownLine>,
    pub roles: RoleMap,
    pub orphan_policy: OrphanPolicy,
    pub guard: Guard,
}

/// What the extension records about a Flex line it made or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRecord {
    pub line_id: String,
    pub resource_id: String,
    pub created_by_sync: bool,
    pub applied_role: Option<String>,
}

/// The database writes that record what Flex confirmed, applied in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// (technician, line) rows that point at a line Flex no longer has: deleted only while they
    /// still point there, so a row the application repointed meanwhile stays.
    pub stale_rows: Vec<(String, String)>,
    /// Lines Flex deleted (or had already deleted): their rows and records go, but the rows of
    /// technicians whose contact is adopted, which are repointed instead.
    pub deleted_lines: Vec<String>,
    /// (technician, line) rows to insert or repoint, for contacts Flex already held.
    pub adopted_rows: Vec<(String, String)>,
    /// (technician, line) rows for the adds Flex confirmed.
    pub added_rows: Vec<(String, String)>,
    pub line_records: Vec<LineRecord>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        !self.deletes_rows() && self.adopted_rows.is_empty() && self.added_rows.is_empty() && self.line_records.is_empty()
    }

    /// Whether there are rows or line records to delete (they go first, in a statement of
    /// their own, so that a row deleted and then written again is a new row, as it always was).
    pub fn deletes_rows(&self) -> bool {
        !self.stale_rows.is_empty() || !self.deleted_lines.is_empty()
    }

    /// Every row to insert or repoint, one per technician: where a technician is both adopted
    /// and added, the add, which is written last, wins.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        let mut rows: Vec<(String, String)> =
            self.adopted_rows.iter().chain(&self.added_rows).rev().filter(|(t, _)| seen.insert(t.clone())).cloned().collect();
        rows.reverse();
        rows
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Listed, and some change failed.
    Partial,
    /// The listing failed: nothing was changed.
    Failed,
    Skipped,
    /// Listed, and the guard held the deletes (the rest was applied).
    Held,
}

impl Status {
    /// Whether the department finished cleanly (`ok` of the call is all of them).
    pub fn is_clean(self) -> bool {
        matches!(self, Status::Ok | Status::Skipped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Held => "held",
        }
    }
}

/// Why a department was not synced. `code` is what the queue reads; `note` is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Another sync holds the crew call's lock.
    Busy,
    /// The job has no crew call for the department.
    NoCrewCall,
}

impl Skip {
    pub fn code(self) -> &'static str {
        match self {
            Skip::Busy => "busy",
            Skip::NoCrewCall => "no_crew_call",
        }
    }

    pub fn note(self) -> &'static str {
        match self {
            Skip::Busy => "another sync of this crew call is running",
            Skip::NoCrewCall => "no crew call mapping",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
    pub roles_set: usize,
    pub failed_adds: usize,
    pub adopted: usize,
    pub stale_removed: usize,
    pub duplicates_removed: usize,
    pub orphans_removed: usize,
    pub desired_count: usize,
    pub current_count: usize,
    pub errors: Vec<(ErrorCode, String)>,
    pub diagnostics: Vec<String>,
    pub listed: bool,
    pub skip: Option<Skip>,
    pub held: Option<Held>,
}

/// What the caller measured about the sync, for its summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub flex_calls: u64,
    pub duration_ms: u64,
    pub lock_wait_ms: u64,
    /// Everything but waiting for the lock and for Flex: the database-side cost.
    pub own_work_us: u64,
}

impl Report {
    pub fn skipped(skip: Skip) -> Report {
        Report { skip: Some(skip), ..Report::default() }
    }

    fn error(&mut self, code: ErrorCode, what: String) {
        self.errors.push((code, what));
    }

    pub fn status(&self) -> Status {
        match (self.skip, self.listed, self.errors.is_empty()) {
            (Some(_), _, _) => Status::Skipped,
            (None, false, _) => Status::Failed,
            // Errors come first: the queue retries a partial sync, and holds a held one.
            (None, true, true) if self.held.is_some() => Status::Held,
            (None, true, true) => Status::Ok,
            (None, true, false) => Status::Partial,
        }
    }

    /// Each error as "<code>: <what>", the code first so that it can be read back.
    pub fn error_lines(&self) -> Vec<String> {
        self.errors.iter().map(|(code, what)| format!("{code}: {what}")).collect()
    }

    /// The department's entry of `flex_sync_job`'s summary (the Edge Function's shape, plus ours).
    pub fn summary(&self, measured: Measured) -> Value {
        let mut summary = json!({
            "status": self.status().as_str(),
            "added": self.added,
            "removed": self.removed,
            "kept": self.kept,
            "rolesSet": self.roles_set,
            "failedAdds": self.failed_adds,
            "desired_count": self.desired_count,
            "current_count": self.current_count,
            "adopted": self.adopted,
            "stale_removed": self.stale_removed,
            "duplicates_removed": self.duplicates_removed,
            "orphans_removed": self.orphans_removed,
            "flex_calls": measured.flex_calls,
            "duration_ms": measured.duration_ms,
            "lock_wait_ms": measured.lock_wait_ms,
            "own_work_us": measured.own_work_us,
            "errors": self.error_lines(),
            "business_role_diagnostics": self.diagnostics,
        });
        if let Some(held) = &self.held {
            summary["held"] = held.to_json();
        }
        if let Some(skip) = self.skip {
            summary["skip"] = json!(skip.code());
            summary["note"] = json!(skip.note());
        }
        summary
    }
}

#[derive(Debug)]
pub enum Step {
    /// Run these calls (in any order, in parallel) and feed every answer back.
    Send(Vec<Request>),
    Done(Box<Conclusion>),
}

#[derive(Debug)]
pub struct Conclusion {
    pub report: Report,
    pub writes: Writes,
}

/// A contact Flex confirmed adding, and what became of its role, if one was sent.
#[derive(Debug)]
struct Added {
    add: usize,
    line: String,
    role: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Listing,
    Changes,
    DeletesLineByLine,
    Relisting,
    AddsAgain,
    RolesOfAdds,
    Done,
}

pub struct Reconcile {
    input: CrewInput,
    phase: Phase,
    plan: Plan,
    report: Report,
    writes: Writes,
    /// Lines already accounted for: the first listing's, then every confirmed add's.
    claimed: HashSet<String>,
    added: Vec<Added>,
    /// Adds whose answer did not say whether Flex applied them.
    unknown_adds: Vec<usize>,
    /// Answers to adds, kept while deletes are sent again line by line.
    add_answers: Vec<Answer>,
    /// What the last step asked, so that every answer is to something asked and nothing asked
    /// goes unanswered.
    asked: Vec<Tag>,
    /// Errors in the order summaries have always listed them: adds first (they come last), then
    /// deletes, then role changes of kept contacts, then roles of new ones.
    delete_errors: Vec<(ErrorCode, String)>,
    role_errors: Vec<(ErrorCode, String)>,
}

impl Reconcile {
    pub fn new(input: CrewInput) -> Reconcile {
        let report = Report { desired_count: input.desired.len(), current_count: input.rows.len(), ..Report::default() };
        Reconcile {
            input,
            phase: Phase::Start,
            plan: Plan::default(),
            report,
            writes: Writes::default(),
            claimed: HashSet::new(),
            added: Vec::new(),
            unknown_adds: Vec::new(),
            add_answers: Vec::new(),
            asked: Vec::new(),
            delete_errors: Vec::new(),
            role_errors: Vec::new(),
        }
    }

    /// The answers to what was asked, one each: answers to anything else are dropped, a repeated
    /// answer counts once, and a call left unanswered counts as lost (Flex may have applied it).
    fn answers_to_asked(&mut self, answers: Vec<Answer>) -> Vec<Answer> {
        let asked = std::mem::take(&mut self.asked);
        let mut answers: Vec<Option<Answer>> = answers.into_iter().map(Some).collect();
        asked
            .into_iter()
            .map(|tag| {
                answers.iter_mut().find(|a| a.as_ref().is_some_and(|a| a.tag == tag)).and_then(Option::take).unwrap_or(Answer {
                    tag,
                    outcome: Outcome::Failure(Failure::new(ErrorCode::WorkerLost, None, true)),
                    role: None,
                })
            })
            .collect()
    }

    /// The next step, given the answers to the calls the previous step asked for (none at first).
    pub fn step(&mut self, answers: Vec<Answer>) -> Step {
        let answers = self.answers_to_asked(answers);
        let requests = match self.phase {
            Phase::Start => {
                self.phase = Phase::Listing;
                vec![self.listing(Tag::Listing)]
            }
            Phase::Listing => self.listed(answers),
            Phase::Changes => self.changes_answered(answers),
            Phase::DeletesLineByLine => {
                self.apply_deletes(answers);
                self.settle_adds()
            }
            Phase::Relisting => self.relisted(answers),
            Phase::AddsAgain => {
                self.added_again(answers);
                self.roles_of_adds()
            }
            Phase::RolesOfAdds => {
                for answer in answers {
                    if let (Tag::RoleOfAdd(add), outcome) = (answer.tag, answer.outcome) {
                        if let Some(added) = self.added.iter_mut().find(|a| a.add == add) {
                            added.role = Some(outcome);
                        }
                    }
                }
                Vec::new()
            }
            Phase::Done => panic!("the sync of this crew call is over"),
        };
        if requests.is_empty() {
            self.phase = Phase::Done;
            Step::Done(Box::new(self.conclude()))
        } else {
            self.asked = requests.iter().map(|r| r.tag).collect();
            Step::Send(requests)
        }
    }

    fn element(&self) -> String {
        self.input.flex_element_id.clone()
    }

    fn listing(&self, tag: Tag) -> Request {
        Request { tag, ..listing_request(&self.input.flex_element_id) }
    }

    fn add(&self, tag: Tag, add: &Add) -> Request {
        Request {
            tag,
            call: FlexCall::AddContact { element: self.element(), resource: add.resource_id.clone() },
            role_after_add: add.role_id.clone(),
        }
    }

    fn listed(&mut self, answers: Vec<Answer>) -> Vec<Request> {
        let listing = match answers.into_iter().find(|a| a.tag == Tag::Listing).map(|a| a.outcome) {
            Some(Outcome::Success(body)) => match parse_listing(&body) {
                Ok(listing) => listing,
                Err(_) => return self.listing_failed(ErrorCode::BadListing),
            },
            Some(Outcome::Failure(f)) => return self.listing_failed(f.code),
            None => return self.listing_failed(ErrorCode::WorkerLost),
        };
        self.report.listed = true;
        let (plan, held) = planned(&self.input, &listing);
        self.plan = plan;
        if !self.input.guard.force {
            if let Some(held) = held {
                self.plan.deletes.clear();
                self.report.held = Some(held);
            }
        }
        self.report.diagnostics = self.plan.diagnostics.clone();
        self.report.kept = self.plan.kept;
        self.report.adopted = self.plan.adoptions.len();
        self.report.stale_removed = self.plan.stale_rows.len();
        self.writes.stale_rows = self
            .input
            .rows
            .iter()
            .filter(|r| self.plan.stale_rows.contains(&r.technician_id))
            .map(|r| (r.technician_id.clone(), r.line_id.clone()))
            .collect();
        self.writes.adopted_rows = self.plan.adoptions.iter().map(|a| (a.technician_id.clone(), a.line_id.clone())).collect();
        self.claimed = listing.contacts.iter().map(|c| c.line_id.clone()).collect();

        let mut requests: Vec<Request> =
            self.plan.adds.iter().enumerate().map(|(i, add)| self.add(Tag::Add(i), add)).collect();
        requests.extend(match self.plan.deletes.as_slice() {
            [] => None,
            [only] => Some(Request { tag: Tag::Delete(0), call: FlexCall::DeleteLine { line: only.line_id.clone() }, role_after_add: None }),
            many => Some(Request {
                tag: Tag::Deletes,
                call: FlexCall::DeleteLines { lines: many.iter().map(|d| d.line_id.clone()).collect() },
                role_after_add: None,
            }),
        });
        requests.extend(self.plan.role_sets.iter().enumerate().map(|(i, r)| Request {
            tag: Tag::SetRole(i),
            call: FlexCall::SetRole { element: self.element(), line: r.line_id.clone(), role: r.role_id.clone() },
            role_after_add: None,
        }));
        self.phase = Phase::Changes;
        requests
    }

    fn listing_failed(&mut self, code: ErrorCode) -> Vec<Request> {
        self.report.error(code, "listing the crew call failed; nothing was changed".to_string());
        Vec::new()
    }

    fn changes_answered(&mut self, answers: Vec<Answer>) -> Vec<Request> {
        let mut deletes = Vec::new();
        for answer in answers {
            match answer.tag {
                Tag::Add(_) => self.add_answers.push(answer),
                Tag::SetRole(i) => {
                    let role = self.plan.role_sets[i].clone();
                    let what = format!("business role of line {} not set", role.line_id);
                    if let Some(error) = self.role_error(&answer.outcome, what) {
                        self.role_errors.push(error);
                    } else {
                        self.writes.line_records.push(LineRecord {
                            line_id: role.line_id,
                            resource_id: role.resource_id,
                            created_by_sync: false,
                            applied_role: Some(role.role_id),
                        });
                    }
                }
                _ => deletes.push(answer),
            }
        }
        // Bulk delete is not documented: a tenant that refuses it as a request (a 4xx other than
        // auth and rate limits) gets every line again as a single delete.
        let refused = deletes.iter().any(|a| {
            a.tag == Tag::Deletes
                && matches!(&a.outcome, Outcome::Failure(f)
                    if f.status.is_some_and(|s| (400..500).contains(&s) && ![401, 403, 429].contains(&s)))
        });
        if refused {
            self.phase = Phase::DeletesLineByLine;
            return (0..self.plan.deletes.len())
                .map(|i| Request {
                    tag: Tag::Delete(i),
                    call: FlexCall::DeleteLine { line: self.plan.deletes[i].line_id.clone() },
                    role_after_add: None,
                })
                .collect();
        }
        self.apply_deletes(deletes);
        self.settle_adds()
    }

    /// The outcome of every planned delete, from a bulk answer or from single ones.
    fn apply_deletes(&mut self, answers: Vec<Answer>) {
        let mut outcomes: BTreeMap<usize, Outcome> = BTreeMap::new();
        for answer in answers {
            match answer.tag {
                Tag::Deletes => outcomes.extend((0..self.plan.deletes.len()).map(|i| (i, answer.outcome.clone()))),
                Tag::Delete(i) => {
                    outcomes.insert(i, answer.outcome);
                }
                _ => {}
            }
        }
        for (i, outcome) in outcomes {
            let delete = self.plan.deletes[i].clone();
            let gone = match outcome {
                Outcome::Success(_) => true,
                // Already gone is what we wanted.
                Outcome::Failure(f) if f.status == Some(404) => true,
                Outcome::Failure(f) => {
                    self.delete_errors.push((f.code, format!("delete of line {} failed", delete.line_id)));
                    false
                }
            };
            if gone {
                self.report.removed += 1;
                match delete.reason {
                    DeleteReason::Duplicate => self.report.duplicates_removed += 1,
                    DeleteReason::Orphan => self.report.orphans_removed += 1,
                    DeleteReason::NotDesired => {}
                }
                self.writes.deleted_lines.push(delete.line_id);
            }
        }
    }

    /// Adds answered with a line id are done; failed ones are reported; the rest are looked up.
    fn settle_adds(&mut self) -> Vec<Request> {
        let mut answers = std::mem::take(&mut self.add_answers);
        answers.sort_by_key(|a| a.tag);
        for answer in answers {
            let Tag::Add(i) = answer.tag else { continue };
            match answer.outcome {
                Outcome::Success(body) => match parse_added_line_id(&body) {
                    Some(line) => self.confirm_add(i, line, answer.role),
                    None => self.unknown_adds.push(i),
                },
                Outcome::Failure(f) if f.ambiguous => self.unknown_adds.push(i),
                Outcome::Failure(f) => self.add_failed(i, f.code, |tech| format!("add failed for tech {tech}")),
            }
        }
        if self.unknown_adds.is_empty() {
            return self.roles_of_adds();
        }
        self.phase = Phase::Relisting;
        vec![self.listing(Tag::Relisting)]
    }

    fn relisted(&mut self, answers: Vec<Answer>) -> Vec<Request> {
        let unknown = std::mem::take(&mut self.unknown_adds);
        let listing = match answers.into_iter().find(|a| a.tag == Tag::Relisting).map(|a| a.outcome) {
            Some(Outcome::Success(body)) => parse_listing(&body).ok(),
            _ => None,
        };
        let Some(listing) = listing else {
            for i in unknown {
                self.add_failed(i, ErrorCode::AddUnconfirmed, |tech| {
                    format!("add for tech {tech} may or may not have applied; the next sync adopts it if it did")
                });
            }
            return self.roles_of_adds();
        };
        let adds: Vec<&Add> = unknown.iter().map(|&i| &self.plan.adds[i]).collect();
        let found = resolve_ambiguous_adds(&adds, &listing, &self.claimed);
        let mut again = Vec::new();
        for (i, line) in unknown.into_iter().zip(found) {
            match line {
                Some(line) => self.confirm_add(i, line, None),
                None => again.push(i),
            }
        }
        if again.is_empty() {
            return self.roles_of_adds();
        }
        // Flex did not apply these: one more add each is safe. Its answer counts only with an id.
        self.phase = Phase::AddsAgain;
        again.into_iter().map(|i| self.add(Tag::AddAgain(i), &self.plan.adds[i])).collect()
    }

    fn added_again(&mut self, mut answers: Vec<Answer>) {
        answers.sort_by_key(|a| a.tag);
        for answer in answers {
            let Tag::AddAgain(i) = answer.tag else { continue };
            match answer.outcome {
                Outcome::Success(body) => match parse_added_line_id(&body) {
                    Some(line) => self.confirm_add(i, line, answer.role),
                    None => self.add_failed(i, ErrorCode::AddUnconfirmed, |tech| {
                        format!("add for tech {tech} returned no line id; the next sync adopts it")
                    }),
                },
                Outcome::Failure(f) => self.add_failed(i, f.code, |tech| format!("add failed for tech {tech}")),
            }
        }
    }

    /// Adds confirmed only by the relisting went without their role: send those now.
    fn roles_of_adds(&mut self) -> Vec<Request> {
        self.phase = Phase::RolesOfAdds;
        self.added
            .iter()
            .filter(|a| a.role.is_none())
            .filter_map(|a| {
                let role = self.plan.adds[a.add].role_id.clone()?;
                Some(Request {
                    tag: Tag::RoleOfAdd(a.add),
                    call: FlexCall::SetRole { element: self.element(), line: a.line.clone(), role },
                    role_after_add: None,
                })
            })
            .collect()
    }

    fn confirm_add(&mut self, add: usize, line: String, role: Option<Outcome>) {
        self.claimed.insert(line.clone());
        self.added.push(Added { add, line, role });
    }

    /// An add that made no contact the sync can record: counted, and reported as `what` says.
    fn add_failed(&mut self, add: usize, code: ErrorCode, what: impl FnOnce(&str) -> String) {
        self.report.failed_adds += 1;
        let what = what(&self.plan.adds[add].technician_id);
        self.report.error(code, what);
    }

    /// Counts a role Flex took; for one it refused, the error to report.
    fn role_error(&mut self, outcome: &Outcome, what: String) -> Option<(ErrorCode, String)> {
        match outcome {
            Outcome::Success(_) => {
                self.report.roles_set += 1;
                None
            }
            Outcome::Failure(f) => Some((f.code, what)),
        }
    }

    fn conclude(&mut self) -> Conclusion {
        let added = std::mem::take(&mut self.added);
        self.report.errors.append(&mut self.delete_errors);
        self.report.errors.append(&mut self.role_errors);
        for new in &added {
            let add = self.plan.adds[new.add].clone();
            let applied = match &new.role {
                Some(outcome) => {
                    let error = self.role_error(outcome, format!("business role of tech {} not set", add.technician_id));
                    let applied = error.is_none();
                    self.report.errors.extend(error);
                    applied
                }
                None => false,
            };
            self.writes.line_records.push(LineRecord {
                line_id: new.line.clone(),
                resource_id: add.resource_id.clone(),
                created_by_sync: true,
                applied_role: if applied { add.role_id.clone() } else { None },
            });
            self.writes.added_rows.push((add.technician_id, new.line.clone()));
        }
        self.report.added = added.len();
        Conclusion { report: std::mem::take(&mut self.report), writes: std::mem::take(&mut self.writes) }
    }
}

/// The plan for a crew call from one listing, and what the guard would hold of it: the one
/// place the sync, its preview and the drift check get their diff from.
pub fn planned(input: &CrewInput, listing: &CrewListing) -> (Plan, Option<Held>) {
    planned_with(input, listing, input.orphan_policy)
}

fn planned_with(input: &CrewInput, listing: &CrewListing, orphan_policy: OrphanPolicy) -> (Plan, Option<Held>) {
    let plan = plan(&CrewState {
        department: &input.department,
        desired: &input.desired,
        rows: &input.rows,
        listing,
        known: &input.known,
        roles: &input.roles,
        orphan_policy,
    });
    let contacts = listing.contacts.len();
    let guarded = plan.deletes.len() - plan.count_deletes(DeleteReason::Duplicate);
    let held = input.guard.hold_reason(guarded, contacts, input.desired.len()).map(|reason| Held {
        reason,
        contacts,
        deletes: plan.deletes.clone(),
        max_delete_permille: input.guard.max_delete_permille,
    });
    (plan, held)
}

/// The listing of a crew call's element: the first call of a sync, the only one of a preview or a
/// drift check. It needs nothing but the element, so it can be sent before the crew is read.
pub fn listing_request(element: &str) -> Request {
    Request { tag: Tag::Listing, call: FlexCall::ListCrew { element: element.to_string() }, role_after_add: None }
}

/// The resource of a listed contact.
fn resource_of(listing: &CrewListing, line: &str) -> Option<String> {
    listing.contacts.iter().find(|c| c.line_id == line).map(|c| c.resource_id.clone())
}

/// The listing a preview or a drift check reads, or the error code its failure reports.
fn read_listing(answer: Outcome) -> Result<CrewListing, ErrorCode> {
    match answer {
        Outcome::Success(body) => parse_listing(&body).map_err(|_| ErrorCode::BadListing),
        Outcome::Failure(f) => Err(f.code),
    }
}

/// `flex_sync_plan`'s entry for one crew call: what a sync would do now, given the answer to
/// one listing (the only call a preview makes). `status` is the status the sync would report if
/// every call succeeded.
pub fn preview(input: &CrewInput, listing: Outcome) -> Value {
    let listing = match read_listing(listing) {
        Ok(listing) => listing,
        Err(code) => {
            return json!({"status": Status::Failed.as_str(),
                          "errors": [format!("{code}: listing the crew call failed; nothing is planned")]})
        }
    };
    let (plan, held) = planned(input, &listing);
    let held = held.filter(|_| !input.guard.force);
    let status = if held.is_some() { Status::Held } else { Status::Ok };
    json!({
        "status": status.as_str(),
        "desired_count": input.desired.len(),
        "current_count": input.rows.len(),
        "contacts": listing.contacts.len(),
        "kept": plan.kept,
        "adds": plan.adds.iter().map(|a| json!({"technician_id": a.technician_id, "resource_id": a.resource_id, "role_id": a.role_id})).collect::<Vec<_>>(),
        "deletes": plan.deletes.iter().map(|d| json!({"line_id": d.line_id, "resource_id": resource_of(&listing, &d.line_id), "reason": reason_name(d.reason)})).collect::<Vec<_>>(),
        "role_changes": plan.role_sets.iter().map(|r| json!({"line_id": r.line_id, "resource_id": r.resource_id, "role_id": r.role_id})).collect::<Vec<_>>(),
        "adoptions": plan.adoptions.iter().map(|a| json!({"technician_id": a.technician_id, "line_id": a.line_id})).collect::<Vec<_>>(),
        "stale_rows": plan.stale_rows,
        "held": held.map(|h| h.to_json()),
        "business_role_diagnostics": plan.diagnostics,
    })
}

/// What a drift check found for one crew call: where Flex's contacts disagree with the desired
/// set and the rows. Every contact that is not desired counts as extra, whatever the orphan
/// policy would let a sync delete.
pub fn drift(input: &CrewInput, listing: Outcome) -> Result<Value, ErrorCode> {
    let listing = read_listing(listing)?;
    let (plan, _) = planned_with(input, &listing, OrphanPolicy::Prune);
    let deletes = |duplicates: bool| -> Vec<Value> {
        plan.deletes
            .iter()
            .filter(|d| (d.reason == DeleteReason::Duplicate) == duplicates)
            .map(|d| json!({"line_id": d.line_id, "resource_id": resource_of(&listing, &d.line_id)}))
            .collect()
    };
    let missing: Vec<Value> =
        plan.adds.iter().map(|a| json!({"technician_id": a.technician_id, "resource_id": a.resource_id})).collect();
    let wrong_role: Vec<Value> =
        plan.role_sets.iter().map(|r| json!({"line_id": r.line_id, "resource_id": r.resource_id, "role_id": r.role_id})).collect();
    let rows: Vec<Value> = plan
        .stale_rows
        .iter()
        .map(|t| json!({"technician_id": t, "problem": "points at a line Flex does not have"}))
        .chain(plan.adoptions.iter().map(|a| json!({"technician_id": a.technician_id, "problem": "points elsewhere", "contact": a.line_id})))
        .collect();
    let (extra, duplicated) = (deletes(false), deletes(true));
    let in_sync = missing.is_empty() && extra.is_empty() && duplicated.is_empty() && wrong_role.is_empty() && rows.is_empty();
    Ok(json!({
        "in_sync": in_sync,
        "missing": missing,
        "extra": extra,
        "duplicated": duplicated,
        "wrong_role": wrong_role,
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tech(t: &str, r: &str, role: Option<&str>) -> DesiredTech {
        DesiredTech { technician_id: t.into(), resource_id: r.into(), role_code: role.map(Into::into) }
    }

    fn input(desired: Vec<DesiredTech>, rows: Vec<DbRow>) -> CrewInput {
        CrewInput {
            department: "sound".into(),
            flex_element_id: "el".into(),
            desired,
            rows,
            roles: RoleMap([('T', "ROLE-T".to_string())].into_iter().collect()),
            ..CrewInput::default()
        }
    }

    /// A listing body as Flex's row-data answers, one contact per (line, resource).
    fn listing(contacts: &[(&str, &str)]) -> Vec<u8> {
        let rows: Vec<Value> = contacts
            .iter()
            .map(|(line, resource)| json!({"id": line, "resourceId": resource, "leaf": true}))
            .collect();
        serde_json::to_vec(&rows).unwrap()
    }

    fn ok(body: &[u8]) -> Outcome {
        Outcome::Success(body.to_vec())
    }

    fn added(line: &str) -> Outcome {
        ok(json!({"addedResourceLineIds": [line]}).to_string().as_bytes())
    }

    fn failed(code: ErrorCode, status: Option<u16>, ambiguous: bool) -> Outcome {
        Outcome::Failure(Failure::new(code, status, ambiguous))
    }

    fn answer(tag: Tag, outcome: Outcome) -> Answer {
        Answer { tag, outcome, role: None }
    }

    /// Runs the machine with `flex` answering each request; every request asked, in order.
    fn run(input: CrewInput, mut flex: impl FnMut(&Request) -> Answer) -> (Conclusion, Vec<Request>) {
        let mut machine = Reconcile::new(input);
        let mut asked = Vec::new();
        let mut answers = Vec::new();
        loop {
            match machine.step(answers) {
                Step::Send(requests) => {
                    answers = requests.iter().map(&mut flex).collect();
                    asked.extend(requests);
                }
                Step::Done(conclusion) => return (*conclusion, asked),
            }
        }
    }

    fn tags(asked: &[Request]) -> Vec<Tag> {
        asked.iter().map(|r| r.tag).collect()
    }

    #[test]
    fn nothing_to_change_is_one_listing_and_no_write() {
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], vec![DbRow { technician_id: "t1".into(), line_id: "l1".into() }]), |r| {
            answer(r.tag, ok(&listing(&[("l1", "r1")])))
        });
        assert_eq!(tags(&asked), vec![Tag::Listing]);
        assert_eq!(done.report.status(), Status::Ok);
        assert_eq!(done.report.kept, 1);
        assert!(done.writes.is_empty());
    }

    #[test]
    fn a_failed_listing_changes_nothing() {
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| answer(r.tag, failed(ErrorCode::Http(503), Some(503), false)));
        assert_eq!(tags(&asked), vec![Tag::Listing]);
        assert_eq!(done.report.status(), Status::Failed);
        assert_eq!(done.report.error_lines(), vec!["flex_http_503: listing the crew call failed; nothing was changed"]);
        assert!(done.writes.is_empty());
        let (garbage, _) = run(input(vec![], vec![]), |r| answer(r.tag, ok(b"<html>")));
        assert_eq!(garbage.report.errors[0].0, ErrorCode::BadListing);
    }

    #[test]
    fn an_add_with_its_role_is_recorded_with_the_role_it_got() {
        let (done, asked) = run(input(vec![tech("t1", "r1", Some("SND-PA-T"))], vec![]), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[]))),
            _ => Answer { tag: r.tag, outcome: added("new-1"), role: Some(ok(b"{}")) },
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0)]);
        assert_eq!(asked[1].role_after_add.as_deref(), Some("ROLE-T"));
        assert_eq!((done.report.added, done.report.roles_set, done.report.status()), (1, 1, Status::Ok));
        assert_eq!(done.writes.rows(), vec![("t1".to_string(), "new-1".to_string())]);
        assert_eq!(done.writes.line_records[0].applied_role.as_deref(), Some("ROLE-T"));
        assert!(done.writes.line_records[0].created_by_sync);
    }

    #[test]
    fn a_failed_role_after_an_add_keeps_the_contact_without_the_role() {
        let (done, _) = run(input(vec![tech("t1", "r1", Some("SND-PA-T"))], vec![]), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[]))),
            _ => Answer { tag: r.tag, outcome: added("new-1"), role: Some(failed(ErrorCode::Http(500), Some(500), false)) },
        });
        assert_eq!((done.report.added, done.report.roles_set, done.report.status()), (1, 0, Status::Partial));
        assert_eq!(done.writes.line_records[0].applied_role, None, "the next sync sends the role again");
    }

    #[test]
    fn a_refused_add_is_a_failed_add_and_writes_nothing() {
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[]))),
            _ => answer(r.tag, failed(ErrorCode::Http(400), Some(400), false)),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0)], "a refused add is not looked up");
        assert_eq!((done.report.failed_adds, done.report.status()), (1, Status::Partial));
        assert!(done.writes.rows().is_empty());
    }

    #[test]
    fn an_ambiguous_add_found_by_the_relisting_is_adopted_and_gets_its_role_last() {
        let mut listings = 0;
        let (done, asked) = run(input(vec![tech("t1", "r1", Some("SND-PA-T"))], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => {
                listings += 1;
                answer(r.tag, ok(&listing(if listings == 1 { &[] } else { &[("made-1", "r1")] })))
            }
            Tag::Add(_) => answer(r.tag, failed(ErrorCode::Timeout, None, true)),
            _ => answer(r.tag, ok(b"{}")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0), Tag::Relisting, Tag::RoleOfAdd(0)]);
        assert!(matches!(&asked[3].call, FlexCall::SetRole { line, .. } if line == "made-1"));
        assert_eq!((done.report.added, done.report.roles_set, done.report.status()), (1, 1, Status::Ok));
        assert_eq!(done.writes.rows(), vec![("t1".to_string(), "made-1".to_string())]);
    }

    #[test]
    fn an_ambiguous_add_flex_did_not_apply_is_sent_once_more() {
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => answer(r.tag, ok(&listing(&[]))),
            Tag::Add(_) => answer(r.tag, ok(b"{}")),
            _ => answer(r.tag, added("second-1")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0), Tag::Relisting, Tag::AddAgain(0)]);
        assert_eq!(done.writes.rows(), vec![("t1".to_string(), "second-1".to_string())]);
        // Once more only: an answer without an id again is reported, not repeated.
        let (unsure, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => answer(r.tag, ok(&listing(&[]))),
            _ => answer(r.tag, ok(b"{}")),
        });
        assert_eq!(asked.len(), 4);
        assert_eq!(unsure.report.errors[0].0, ErrorCode::AddUnconfirmed);
        assert!(unsure.writes.rows().is_empty());
    }

    #[test]
    fn a_failed_relisting_leaves_the_ambiguous_adds_unconfirmed_and_sends_nothing_again() {
        let mut listings = 0;
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => {
                listings += 1;
                answer(r.tag, if listings == 1 { ok(&listing(&[])) } else { failed(ErrorCode::Timeout, None, false) })
            }
            _ => answer(r.tag, failed(ErrorCode::Http(502), Some(502), true)),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0), Tag::Relisting]);
        assert_eq!(done.report.errors[0].0, ErrorCode::AddUnconfirmed);
        assert_eq!(done.report.failed_adds, 1);
    }

    #[test]
    fn of_two_ambiguous_adds_the_one_flex_made_is_adopted_and_the_other_sent_again() {
        let desired = vec![tech("t1", "r1", None), tech("t2", "r2", None)];
        let mut listings = 0;
        let (done, asked) = run(input(desired, vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => {
                listings += 1;
                answer(r.tag, ok(&listing(if listings == 1 { &[] } else { &[("made-2", "r2")] })))
            }
            Tag::Add(_) => answer(r.tag, failed(ErrorCode::Timeout, None, true)),
            _ => answer(r.tag, added("again-1")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0), Tag::Add(1), Tag::Relisting, Tag::AddAgain(0)]);
        assert_eq!(
            done.writes.rows(),
            vec![("t2".to_string(), "made-2".to_string()), ("t1".to_string(), "again-1".to_string())],
            "in the order Flex confirmed them"
        );
        assert_eq!((done.report.added, done.report.status()), (2, Status::Ok));
    }

    /// Forced: deleting every contact of an empty desired set is what the guard holds.
    fn two_to_delete() -> CrewInput {
        CrewInput { guard: Guard { force: true, ..Guard::default() }, ..input(vec![], vec![]) }
    }

    fn listing_of_two() -> Vec<u8> {
        listing(&[("x1", "gone-1"), ("x2", "gone-2")])
    }

    #[test]
    fn deletes_go_in_one_bulk_call_and_a_404_means_gone() {
        let (done, asked) = run(two_to_delete(), |r| answer(r.tag, ok(&listing_of_two())));
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Deletes]);
        assert_eq!((done.report.removed, done.report.orphans_removed, done.report.status()), (2, 2, Status::Ok));
        assert_eq!(done.writes.deleted_lines, vec!["x1".to_string(), "x2".to_string()]);
        let (gone, asked) = run(two_to_delete(), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[("x1", "gone-1")]))),
            _ => answer(r.tag, failed(ErrorCode::Http(404), Some(404), false)),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Delete(0)]);
        assert_eq!((gone.report.removed, gone.report.status()), (1, Status::Ok), "already gone is what we wanted");
        assert_eq!(gone.writes.deleted_lines, vec!["x1".to_string()]);
    }

    #[test]
    fn a_bulk_delete_the_tenant_refuses_is_sent_line_by_line() {
        let (done, asked) = run(two_to_delete(), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing_of_two())),
            Tag::Deletes => answer(r.tag, failed(ErrorCode::Http(405), Some(405), false)),
            Tag::Delete(0) => answer(r.tag, ok(b"{}")),
            _ => answer(r.tag, failed(ErrorCode::Http(500), Some(500), false)),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Deletes, Tag::Delete(0), Tag::Delete(1)]);
        assert_eq!(done.writes.deleted_lines, vec!["x1".to_string()], "the failed one keeps its records");
        assert_eq!((done.report.removed, done.report.status()), (1, Status::Partial));
        // A rate limit or an auth failure is not a refusal of bulk deletes: nothing is resent.
        let (limited, asked) = run(two_to_delete(), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing_of_two())),
            _ => answer(r.tag, failed(ErrorCode::RateLimited, Some(429), false)),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Deletes]);
        assert_eq!(limited.report.errors.len(), 2);
        assert!(limited.writes.deleted_lines.is_empty());
    }

    #[test]
    fn role_changes_of_kept_contacts_are_recorded_only_when_flex_took_them() {
        let rows = vec![DbRow { technician_id: "t1".into(), line_id: "l1".into() }, DbRow { technician_id: "t2".into(), line_id: "l2".into() }];
        let desired = vec![tech("t1", "r1", Some("SND-PA-T")), tech("t2", "r2", Some("SND-PA-T"))];
        let (done, asked) = run(input(desired, rows), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[("l1", "r1"), ("l2", "r2")]))),
            Tag::SetRole(0) => answer(r.tag, ok(b"{}")),
            _ => answer(r.tag, failed(ErrorCode::Deadline, None, false)),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::SetRole(0), Tag::SetRole(1)]);
        assert_eq!(done.report.roles_set, 1);
        assert_eq!(done.writes.line_records.len(), 1);
        assert!(!done.writes.line_records[0].created_by_sync);
        assert_eq!(done.report.status(), Status::Partial);
    }

    #[test]
    fn stale_rows_and_adoptions_are_written_with_the_rest() {
        // t1's row points at a line Flex no longer has; t2 has a contact but no row.
        let rows = vec![DbRow { technician_id: "t1".into(), line_id: "lost".into() }];
        let desired = vec![tech("t1", "r1", None), tech("t2", "r2", None)];
        let (done, asked) = run(input(desired, rows), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[("l2", "r2")]))),
            _ => answer(r.tag, added("l1-new")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0)]);
        assert_eq!(done.writes.stale_rows, vec![("t1".to_string(), "lost".to_string())]);
        assert_eq!(
            done.writes.rows(),
            vec![("t2".to_string(), "l2".to_string()), ("t1".to_string(), "l1-new".to_string())]
        );
        assert_eq!((done.report.adopted, done.report.stale_removed, done.report.added), (1, 1, 1));
    }

    #[test]
    fn the_summary_names_a_skip_by_code_and_errors_by_code_first() {
        let busy = Report::skipped(Skip::Busy).summary(Measured::default());
        assert_eq!((busy["status"].as_str(), busy["skip"].as_str()), (Some("skipped"), Some("busy")));
        let none = Report::skipped(Skip::NoCrewCall).summary(Measured::default());
        assert_eq!((none["skip"].as_str(), none["note"].as_str()), (Some("no_crew_call"), Some("no crew call mapping")));
        let mut report = Report { listed: true, ..Report::default() };
        report.error(ErrorCode::Http(503), "x".into());
        assert_eq!(report.summary(Measured::default())["errors"][0], "flex_http_503: x");
        assert!(report.summary(Measured::default()).get("skip").is_none());
    }

    #[test]
    fn error_codes_keep_their_stable_strings() {
        let all = [
            (ErrorCode::Timeout, "flex_timeout"),
            (ErrorCode::ConnectTimeout, "flex_connect_timeout"),
            (ErrorCode::Connection, "flex_connection"),
            (ErrorCode::HostNotFound, "flex_host_not_found"),
            (ErrorCode::DestinationRefused, "flex_destination_refused"),
            (ErrorCode::Http(503), "flex_http_503"),
            (ErrorCode::RateLimited, "flex_rate_limited"),
            (ErrorCode::Unauthorized, "flex_unauthorized"),
            (ErrorCode::RedirectRefused, "flex_redirect_refused"),
            (ErrorCode::CallBudget, "flex_call_budget"),
            (ErrorCode::Deadline, "flex_deadline"),
            (ErrorCode::ResponseTooLarge, "flex_response_too_large"),
            (ErrorCode::BadListing, "flex_bad_listing"),
            (ErrorCode::BadResponse, "flex_bad_response"),
            (ErrorCode::ErrorInBody, "flex_error_in_body"),
            (ErrorCode::AddUnconfirmed, "flex_add_unconfirmed"),
            (ErrorCode::WorkerLost, "flex_worker_lost"),
        ];
        for (code, text) in all {
            assert_eq!(code.to_string(), text);
        }
    }

    #[test]
    fn errors_come_adds_first_then_deletes_then_roles_of_kept_then_roles_of_new() {
        let rows = vec![DbRow { technician_id: "t1".into(), line_id: "l1".into() }];
        let desired = vec![tech("t1", "r1", Some("SND-PA-T")), tech("t2", "r2", None), tech("t3", "r3", Some("SND-PA-T"))];
        let (done, _) = run(input(desired, rows), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[("l1", "r1"), ("x", "gone")]))),
            Tag::SetRole(_) => answer(r.tag, failed(ErrorCode::Http(500), Some(500), false)),
            Tag::Delete(_) => answer(r.tag, failed(ErrorCode::Http(502), Some(502), false)),
            Tag::Add(0) => answer(r.tag, failed(ErrorCode::Http(400), Some(400), false)),
            _ => Answer { tag: r.tag, outcome: added("n3"), role: Some(failed(ErrorCode::Timeout, None, false)) },
        });
        let codes: Vec<String> = done.report.errors.iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(codes, ["flex_http_400", "flex_http_502", "flex_http_500", "flex_timeout"], "{:?}", done.report.errors);
    }

    #[test]
    fn answers_to_nothing_asked_are_dropped_and_a_call_left_unanswered_counts_as_lost() {
        let mut listings = 0;
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => {
                listings += 1;
                answer(r.tag, ok(&listing(if listings == 1 { &[] } else { &[("made", "r1")] })))
            }
            // The add's own answer never comes; one to a role change nobody asked for does.
            _ => answer(Tag::SetRole(7), ok(b"{}")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0), Tag::Relisting], "lost, so looked up: {asked:?}");
        assert_eq!(done.writes.rows(), vec![("t1".to_string(), "made".to_string())]);
        assert_eq!(done.report.roles_set, 0);
        let (silent, _) = run(input(vec![], vec![]), |_| answer(Tag::Delete(9), ok(b"{}")));
        assert_eq!(silent.report.status(), Status::Failed);
        assert_eq!(silent.report.errors[0].0, ErrorCode::WorkerLost);
    }

    #[test]
    fn an_unreadable_relisting_and_a_refused_second_add_are_reported() {
        let mut listings = 0;
        let (unreadable, _) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => {
                listings += 1;
                answer(r.tag, if listings == 1 { ok(&listing(&[])) } else { ok(b"<html>") })
            }
            _ => answer(r.tag, failed(ErrorCode::Timeout, None, true)),
        });
        assert_eq!(unreadable.report.errors[0].0, ErrorCode::AddUnconfirmed);
        let (refused, asked) = run(input(vec![tech("t1", "r1", None)], vec![]), |r| match r.tag {
            Tag::Listing | Tag::Relisting => answer(r.tag, ok(&listing(&[]))),
            Tag::Add(_) => answer(r.tag, failed(ErrorCode::Timeout, None, true)),
            _ => answer(r.tag, failed(ErrorCode::Http(409), Some(409), false)),
        });
        assert_eq!(tags(&asked).last(), Some(&Tag::AddAgain(0)));
        assert_eq!((refused.report.failed_adds, refused.report.errors[0].0), (1, ErrorCode::Http(409)));
        assert!(refused.writes.rows().is_empty());
    }

    #[test]
    fn an_add_whose_role_never_went_gets_it_sent_last() {
        let (done, asked) = run(input(vec![tech("t1", "r1", Some("SND-PA-T"))], vec![]), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[]))),
            // The add answered with its id, but its role was never sent (no follow-up outcome).
            Tag::Add(_) => answer(r.tag, added("new-1")),
            _ => answer(r.tag, ok(b"{}")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0), Tag::RoleOfAdd(0)]);
        assert_eq!(done.report.roles_set, 1);
        assert_eq!(done.writes.line_records[0].applied_role.as_deref(), Some("ROLE-T"));
    }

    #[test]
    fn an_auth_failure_of_a_bulk_delete_is_not_a_refusal_of_bulk_deletes() {
        for status in [401, 403] {
            let (done, asked) = run(two_to_delete(), |r| match r.tag {
                Tag::Listing => answer(r.tag, ok(&listing_of_two())),
                _ => answer(r.tag, failed(ErrorCode::Unauthorized, Some(status), false)),
            });
            assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Deletes]);
            assert_eq!(done.report.errors.len(), 2);
        }
    }

    #[test]
    fn a_duplicate_contact_is_deleted_and_counted_as_one() {
        let rows = vec![DbRow { technician_id: "t1".into(), line_id: "l1".into() }];
        let (done, asked) = run(input(vec![tech("t1", "r1", None)], rows), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&listing(&[("l1", "r1"), ("l2", "r1")]))),
            _ => answer(r.tag, ok(b"{}")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Delete(0)]);
        assert_eq!((done.report.removed, done.report.duplicates_removed, done.report.kept), (1, 1, 1));
        assert_eq!(done.writes.deleted_lines, vec!["l2".to_string()]);
    }

    #[test]
    fn a_technician_both_adopted_and_added_gets_one_row_the_add() {
        let writes = Writes {
            adopted_rows: vec![("t1".into(), "old".into()), ("t2".into(), "kept".into())],
            added_rows: vec![("t1".into(), "new".into())],
            ..Writes::default()
        };
        assert_eq!(writes.rows(), vec![("t2".to_string(), "kept".to_string()), ("t1".to_string(), "new".to_string())]);
    }


    fn crew_of(n: usize) -> (Vec<DesiredTech>, Vec<DbRow>, Vec<u8>) {
        let desired: Vec<DesiredTech> = (0..n).map(|i| tech(&format!("t{i}"), &format!("r{i}"), None)).collect();
        let rows = (0..n).map(|i| DbRow { technician_id: format!("t{i}"), line_id: format!("l{i}") }).collect();
        let lines: Vec<(String, String)> = (0..n).map(|i| (format!("l{i}"), format!("r{i}"))).collect();
        let pairs: Vec<(&str, &str)> = lines.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        (desired, rows, listing(&pairs))
    }

    #[test]
    fn an_emptied_crew_is_held_and_its_adds_still_go() {
        let (_, rows, body) = crew_of(6);
        let newcomer = vec![tech("new", "r-new", None)];
        // Six go and one comes: more than half of the contacts, so the deletes wait.
        let (done, asked) = run(input(newcomer.clone(), rows.clone()), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&body)),
            _ => answer(r.tag, added("l-new")),
        });
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Add(0)], "no delete is sent");
        assert_eq!(done.report.status(), Status::Held);
        let held = done.report.held.as_ref().unwrap();
        assert_eq!((held.reason, held.contacts, held.deletes.len()), (crate::guard::HoldReason::OverFraction, 6, 6));
        assert!(done.writes.deleted_lines.is_empty());
        assert_eq!(done.writes.added_rows, vec![("new".to_string(), "l-new".to_string())]);
        let summary = done.report.summary(Measured::default());
        assert_eq!(summary["status"], "held");
        assert_eq!(summary["held"]["deletes"].as_array().unwrap().len(), 6);
        assert!(!done.report.status().is_clean());
        // An empty desired set holds every delete, and force applies them.
        let (empty, _) = run(input(vec![], rows.clone()), |r| answer(r.tag, ok(&body)));
        assert_eq!(empty.report.held.as_ref().unwrap().reason, crate::guard::HoldReason::EmptyDesiredSet);
        let forced = CrewInput { guard: Guard { force: true, ..Guard::default() }, ..input(vec![], rows) };
        let (done, asked) = run(forced, |r| answer(r.tag, ok(if r.tag == Tag::Listing { &body } else { b"" })));
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Deletes]);
        assert_eq!((done.report.removed, done.report.status()), (6, Status::Ok));
    }

    #[test]
    fn one_of_eight_is_not_held() {
        let (mut desired, rows, body) = crew_of(8);
        desired.pop();
        let (done, asked) = run(input(desired, rows), |r| answer(r.tag, ok(if r.tag == Tag::Listing { &body } else { b"" })));
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Delete(0)]);
        assert_eq!((done.report.removed, done.report.status()), (1, Status::Ok));
    }

    #[test]
    fn a_preview_lists_what_the_sync_then_does() {
        let (mut desired, rows, body) = crew_of(3);
        desired.remove(0);
        desired.push(tech("new", "r-new", Some("SND-PA-T")));
        let planned = preview(&input(desired.clone(), rows.clone()), ok(&body));
        assert_eq!(planned["status"], "ok");
        assert_eq!(planned["adds"], json!([{"technician_id": "new", "resource_id": "r-new", "role_id": "ROLE-T"}]));
        assert_eq!(planned["deletes"], json!([{"line_id": "l0", "resource_id": "r0", "reason": "not_desired"}]));
        assert_eq!((planned["kept"].clone(), planned["held"].clone()), (json!(2), Value::Null));
        let (done, _) = run(input(desired, rows.clone()), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&body)),
            Tag::Add(_) => Answer { tag: r.tag, outcome: added("l-new"), role: Some(ok(b"{}")) },
            _ => answer(r.tag, ok(b"")),
        });
        assert_eq!((done.report.added, done.report.removed, done.report.kept), (1, 1, 2));
        // What the guard would hold is shown, and a failed listing plans nothing.
        let held = preview(&input(vec![], rows), ok(&body));
        assert_eq!((held["status"].clone(), held["held"]["reason"].clone()), (json!("held"), json!("empty_desired_set")));
        let failed_listing = preview(&input(vec![], vec![]), failed(ErrorCode::Timeout, None, false));
        assert_eq!(failed_listing["status"], "failed");
    }

    #[test]
    fn drift_names_what_disagrees() {
        let (desired, mut rows, _) = crew_of(3);
        rows[2].line_id = "l-old".into();
        let body = serde_json::to_vec(&json!([
            {"id": "l0", "resourceId": "r0", "leaf": true, "business-role": "ROLE-X"},
            {"id": "l0b", "resourceId": "r0", "leaf": true},
            {"id": "l2", "resourceId": "r2", "leaf": true},
            {"id": "hand", "resourceId": "stranger", "leaf": true},
        ]))
        .unwrap();
        let mut wants_role = desired.clone();
        wants_role[0].role_code = Some("SND-PA-T".into());
        let found = drift(&CrewInput { orphan_policy: OrphanPolicy::Keep, ..input(wants_role, rows) }, ok(&body)).unwrap();
        assert_eq!(found["in_sync"], false);
        assert_eq!(found["missing"], json!([{"technician_id": "t1", "resource_id": "r1"}]));
        assert_eq!(found["extra"], json!([{"line_id": "hand", "resource_id": "stranger"}]), "under keep too");
        assert_eq!(found["duplicated"], json!([{"line_id": "l0b", "resource_id": "r0"}]));
        assert_eq!(found["wrong_role"], json!([{"line_id": "l0", "resource_id": "r0", "role_id": "ROLE-T"}]));
        assert_eq!(found["rows"].as_array().unwrap().len(), 2, "t1's row points at nothing, t2's elsewhere");
        let (desired, rows, body) = crew_of(2);
        assert_eq!(drift(&input(desired, rows), ok(&body)).unwrap()["in_sync"], true);
        assert_eq!(drift(&input(vec![], vec![]), ok(b"<html>")), Err(ErrorCode::BadListing));
    }

    #[test]
    fn duplicates_do_not_count_and_a_failure_beside_held_deletes_is_partial() {
        // Two technicians, each with two extra contacts: four deletes of six, none a resource's last.
        let desired = vec![tech("a", "ra", None), tech("b", "rb", None)];
        let body = listing(&[("a1", "ra"), ("a2", "ra"), ("a3", "ra"), ("b1", "rb"), ("b2", "rb"), ("b3", "rb")]);
        let rows = vec![DbRow { technician_id: "a".into(), line_id: "a1".into() }, DbRow { technician_id: "b".into(), line_id: "b1".into() }];
        let (done, asked) = run(input(desired, rows.clone()), |r| answer(r.tag, ok(if r.tag == Tag::Listing { &body } else { b"" })));
        assert_eq!(tags(&asked), vec![Tag::Listing, Tag::Deletes]);
        assert_eq!((done.report.duplicates_removed, done.report.status()), (4, Status::Ok));
        // Everyone leaves but a newcomer whose add fails: the deletes are held, the failure shows.
        let (_, rows, body) = crew_of(6);
        let (done, _) = run(input(vec![tech("new", "r-new", None)], rows), |r| match r.tag {
            Tag::Listing => answer(r.tag, ok(&body)),
            _ => answer(r.tag, failed(ErrorCode::Http(400), Some(400), false)),
        });
        assert_eq!(done.report.status(), Status::Partial, "retried by the queue, not parked");
        assert!(done.report.held.is_some());
        assert_eq!(done.report.summary(Measured::default())["held"]["deletes"].as_array().unwrap().len(), 6);
    }
}
