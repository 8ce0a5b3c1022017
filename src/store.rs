//! Runs the statements of `sql/queries/*.sql`, and nothing else: SPI stays here. Sets come back
//! as one json text value per query and are parsed with serde. A sync makes two statements before
//! its first Flex request (`check_call`, `call_context`) and three per department (a lock,
//! `load_crew`, `write_log`), more when rows or line records change (`write_rows`), when rows go
//! (`delete_rows`) and when the queue held the item (`release_hold`).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use flex_sync_core::guard::Guard;
use flex_sync_core::plan::{DbRow, DesiredTech, KnownLine, OrphanPolicy};
use flex_sync_core::protocol::{CrewInput, Writes};
use flex_sync_core::roles::RoleMap;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::FlexSyncError;

type Result<T> = std::result::Result<T, FlexSyncError>;

thread_local! {
    /// Plans of the statements every sync runs, prepared once per backend (SPI_keepplan). The
    /// plan cache revalidates them when the objects they use change. Keyed by where the
    /// statement's text is: each is a `&'static str` of its own, and hashing the text on every
    /// statement took 1% of a sync.
    static PREPARED: std::cell::RefCell<HashMap<usize, pgrx::spi::OwnedPreparedStatement>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Like `first_value`, for the statements on a sync's hot path: planned once per backend.
fn first_value_prepared<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &'static str,
    args: &[DatumWithOid<'_>],
) -> Result<Option<T>> {
    let result = Spi::connect_mut(|client| {
        PREPARED.with(|prepared| {
            let mut prepared = prepared.borrow_mut();
            let statement = match prepared.entry(sql.as_ptr() as usize) {
                Entry::Occupied(kept) => kept.into_mut(),
                Entry::Vacant(slot) => {
                    let types: Vec<pgrx::pg_sys::PgOid> = args.iter().map(|a| a.oid().into()).collect();
                    slot.insert(client.prepare_mut(sql, &types)?.keep())
                }
            };
            client.update(&*statement, Some(1), args)?.first().get_one::<T>()
        })
    });
    no_row_is_none(result)
}

/// The single value of a one-row query; a query that found no row gives None.
fn first_value<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Result<Option<T>> {
    no_row_is_none(Spi::get_one_with_args::<T>(sql, args))
}

fn no_row_is_none<T>(result: pgrx::spi::Result<Option<T>>) -> Result<Option<T>> {
    match result {
        Err(pgrx::spi::Error::InvalidPosition) => Ok(None),
        other => Ok(other?),
    }
}

fn query_json<T: DeserializeOwned>(sql: &str, args: &[DatumWithOid<'_>]) -> Result<T> {
    decode(first_value::<String>(sql, args)?)
}

fn query_json_prepared<T: DeserializeOwned>(sql: &'static str, args: &[DatumWithOid<'_>]) -> Result<T> {
    decode(first_value_prepared::<String>(sql, args)?)
}

/// Sets come as json text, read straight into their Rust types: cheaper than building jsonb in
/// the query and a serde value from it.
fn decode<T: DeserializeOwned>(value: Option<String>) -> Result<T> {
    serde_json::from_str(value.as_deref().unwrap_or("null")).map_err(|e| FlexSyncError::Decode(e.to_string()))
}

fn execute(sql: &str, args: &[DatumWithOid<'_>]) -> Result<()> {
    Ok(Spi::run_with_args(sql, args)?)
}

/// Who may call (the rule raises itself), then, for a call with a job, whether the application's
/// tables can take a sync.
pub fn check_call(has_job: bool) -> Result<()> {
    #[derive(Deserialize)]
    struct Check {
        missing: Option<String>,
        unique: Option<bool>,
    }
    let check: Check = query_json_prepared(include_str!("../sql/queries/check_call.sql"), &[has_job.into()])?;
    match check {
        _ if !has_job => Ok(()),
        Check { missing: Some(table), .. } => Err(FlexSyncError::MissingTable(table)),
        Check { unique: Some(true), .. } => Ok(()),
        _ => Err(FlexSyncError::NoUniqueConstraint),
    }
}

#[derive(Deserialize)]
pub struct StoredSettings {
    pub base_url: String,
    pub api_token: Option<String>,
    pub options: Value,
}

/// What a call needs to know before it starts, read in one statement (`call_context.sql`).
#[derive(Deserialize)]
pub struct CallContext {
    pub isolation: String,
    pub job_exists: bool,
    /// The departments of the job's crew calls, sorted.
    pub departments: Vec<String>,
    /// Each of those departments' Flex element, as it was before the lock.
    pub elements: HashMap<String, String>,
    pub caller: String,
    pub time_left_ms: Option<i64>,
    pub rate_limited: bool,
    /// None when flex_sync is not configured.
    pub settings: Option<StoredSettings>,
}

/// `job` None for a call about no job in particular (the drift check).
pub fn call_context(job: Option<&str>) -> Result<CallContext> {
    query_json_prepared(include_str!("../sql/queries/call_context.sql"), &[job.into()])
}

/// Those of `names` (trimmed, lower-cased) that some crew call uses as its department.
pub fn departments_in_use(names: Vec<String>) -> Result<Vec<String>> {
    query_json(include_str!("../sql/queries/departments_in_use.sql"), &[names.into()])
}

/// Stores the endpoint and options; a token when one is given. Forgets what was learnt about the
/// previous endpoint (a spent hourly budget).
pub fn save_settings(base_url: &str, api_token: Option<&str>, options: &Value) -> Result<()> {
    execute(include_str!("../sql/queries/forget_flex_state.sql"), &[])?;
    execute(include_str!("../sql/queries/save_settings.sql"), &[base_url.into(), JsonB(options.clone()).into()])?;
    if let Some(token) = api_token {
        execute(include_str!("../sql/queries/save_token.sql"), &[token.into()])?;
    }
    Ok(())
}

pub fn forget_token() -> Result<()> {
    execute(include_str!("../sql/queries/forget_token.sql"), &[])
}

pub fn stored_options() -> Result<Value> {
    let found: Option<Value> = query_json(include_str!("../sql/queries/stored_options.sql"), &[])?;
    Ok(found.unwrap_or_else(|| Value::Object(Default::default())))
}

pub fn token_is_set() -> Result<bool> {
    Ok(first_value::<bool>(include_str!("../sql/queries/token_is_set.sql"), &[])?.unwrap_or(false))
}

/// How long every sync reports `flex_rate_limited` without calling once one saw the budget spent.
pub const RATE_LIMIT_PAUSE: &str = "5 minutes";

pub fn note_rate_limited() -> Result<()> {
    execute(include_str!("../sql/queries/note_rate_limited.sql"), &[RATE_LIMIT_PAUSE.into()])
}

/// Takes the crew call's advisory lock for the rest of the transaction (`wait` false: only if
/// free; a queue test holds the lock by `flex_sync_private.item_lock()` and sees the sync find it
/// busy, so the two keys agree).
pub fn lock_department(job: &str, department: &str, wait: bool) -> Result<bool> {
    let sql = if wait {
        include_str!("../sql/queries/lock_crew_call.sql")
    } else {
        include_str!("../sql/queries/try_lock_crew_call.sql")
    };
    Ok(first_value_prepared::<bool>(sql, &[job.into(), department.into()])?.unwrap_or(false))
}

/// A crew call as the database holds it, read after the lock is held: its id, and the
/// protocol's input.
pub struct StoredCrew {
    pub id: String,
    /// Whether the queue holds the item: the sync ends the hold unless it holds again.
    pub held: bool,
    pub input: CrewInput,
}

/// One statement for the whole read: it is most of a no-change sync's database time.
pub fn load_crew(job: &str, department: &str, orphan_policy: OrphanPolicy, guard: Guard) -> Result<Option<StoredCrew>> {
    /// A set of rows as load_crew.sql gives it: one list per column (None for no rows).
    type Columns<A, B, C> = (Option<Vec<A>>, Option<Vec<B>>, Option<Vec<C>>);
    #[derive(Deserialize)]
    struct Stored {
        id: String,
        element: String,
        desired: Columns<String, String, Option<String>>,
        rows: (Option<Vec<String>>, Option<Vec<String>>),
        known: Columns<String, bool, Option<String>>,
        audited: Option<Vec<String>>,
        roles: Option<HashMap<String, String>>,
        held: bool,
    }
    let stored: Option<Stored> = query_json_prepared(
        include_str!("../sql/queries/load_crew.sql"),
        &[job.into(), department.into()],
    )?;
    Ok(stored.map(|s| {
        let (lines, created, applied) = s.known;
        let mut known: HashMap<String, KnownLine> = zip3(lines, created, applied)
            .map(|(l, c, r)| (l, KnownLine { created_by_sync: c, applied_role: r }))
            .collect();
        // A line a removed duplicate row pointed at is a contact the application made.
        for line in s.audited.unwrap_or_default() {
            known.entry(line).or_default().created_by_sync = true;
        }
        let (technicians, resources, role_codes) = s.desired;
        let (row_technicians, row_lines) = s.rows;
        let input = CrewInput {
            department: department.to_string(),
            flex_element_id: s.element,
            orphan_policy,
            guard,
            desired: zip3(technicians, resources, role_codes)
                .map(|(t, r, c)| DesiredTech { technician_id: t, resource_id: r, role_code: c })
                .collect(),
            rows: row_technicians
                .unwrap_or_default()
                .into_iter()
                .zip(row_lines.unwrap_or_default())
                .map(|(t, l)| DbRow { technician_id: t, line_id: l })
                .collect(),
            known,
            roles: RoleMap(
                s.roles
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(tier, id)| Some((tier.chars().next()?, id)))
                    .collect(),
            ),
        };
        StoredCrew { id: s.id, held: s.held, input }
    }))
}

/// The rows of three columns read as lists of one length.
fn zip3<A, B, C>(a: Option<Vec<A>>, b: Option<Vec<B>>, c: Option<Vec<C>>) -> impl Iterator<Item = (A, B, C)> {
    let rows = a.unwrap_or_default().into_iter().zip(b.unwrap_or_default());
    rows.zip(c.unwrap_or_default()).map(|((a, b), c)| (a, b, c))
}

/// The crew call a department's outcome is written for.
pub struct OutcomeCrew<'a> {
    pub id: &'a str,
    pub element: &'a str,
    /// Whether load_crew found the item held by the queue.
    pub held: bool,
}

/// Records what Flex confirmed for one crew call and its log row: the log row alone when nothing
/// changed (most syncs), else a statement before it for the rows and line records, one more
/// before that when rows or line records go, and one for the queue's hold when the item was
/// held. Without a crew call (a skipped department) only the log row is written.
pub fn write_outcome(crew: Option<OutcomeCrew<'_>>, writes: &Writes, log: LogEntry<'_>) -> Result<()> {
    if let Some(crew) = crew {
        write_crew_outcome(&crew, writes, &log)?;
    }
    let [added, removed, kept, roles_set, failed, flex_calls] = log.counts;
    first_value_prepared::<bool>(
        include_str!("../sql/queries/write_log.sql"),
        &[
            log.job.into(),
            log.department.into(),
            log.duration_ms.into(),
            added.into(),
            removed.into(),
            kept.into(),
            roles_set.into(),
            failed.into(),
            flex_calls.into(),
            log.status.into(),
            JsonB(log.errors).into(),
            JsonB(log.summary).into(),
            log.triggered_by.into(),
        ],
    )?;
    Ok(())
}

/// The crew call's part of its outcome: rows and line records that go, those written, the hold.
fn write_crew_outcome(crew: &OutcomeCrew<'_>, writes: &Writes, log: &LogEntry<'_>) -> Result<()> {
    if writes.deletes_rows() {
        let (stale_technicians, stale_lines): (Vec<String>, Vec<String>) = writes.stale_rows.iter().cloned().unzip();
        let adopted: Vec<String> = writes.adopted_rows.iter().map(|(t, _)| t.clone()).collect();
        first_value_prepared::<bool>(
            include_str!("../sql/queries/delete_rows.sql"),
            &[
                crew.id.into(),
                stale_technicians.into(),
                stale_lines.into(),
                writes.deleted_lines.clone().into(),
                adopted.into(),
            ],
        )?;
    }
    let (row_technicians, row_lines): (Vec<String>, Vec<String>) = writes.rows().into_iter().unzip();
    let records = &writes.line_records;
    if !row_technicians.is_empty() || !records.is_empty() {
        first_value_prepared::<bool>(
            include_str!("../sql/queries/write_rows.sql"),
            &[
                crew.id.into(),
                crew.element.into(),
                row_technicians.into(),
                row_lines.into(),
                records.iter().map(|r| r.line_id.clone()).collect::<Vec<String>>().into(),
                records.iter().map(|r| r.resource_id.clone()).collect::<Vec<String>>().into(),
                records.iter().map(|r| r.created_by_sync).collect::<Vec<bool>>().into(),
                records.iter().map(|r| r.applied_role.clone()).collect::<Vec<Option<String>>>().into(),
            ],
        )?;
    }
    if crew.held {
        first_value_prepared::<bool>(
            include_str!("../sql/queries/release_hold.sql"),
            &[log.job.into(), log.department.into(), log.status.into()],
        )?;
    }
    Ok(())
}

/// A crew call the drift check may list next.
#[derive(Deserialize)]
pub struct DriftCandidate {
    pub job_id: String,
    pub department: String,
}

/// Up to `limit` crew calls to check for drift, in the order the overridable rule gives.
pub fn drift_candidates(limit: i32) -> Result<Vec<DriftCandidate>> {
    query_json(include_str!("../sql/queries/drift_candidates.sql"), &[limit.into()])
}

pub fn forget_gone_drift_checks() -> Result<()> {
    execute(include_str!("../sql/queries/forget_gone_drift_checks.sql"), &[])
}

/// Whether a sync holds the crew call's lock now (the drift check passes it over rather than
/// wait, or hold the lock itself for the rest of its run).
pub fn crew_call_is_busy(job: &str, department: &str) -> Result<bool> {
    Ok(first_value::<bool>(include_str!("../sql/queries/crew_call_is_busy.sql"), &[job.into(), department.into()])?
        .unwrap_or(false))
}

/// The drift check's record of one crew call: `in_sync` None when its listing failed.
pub fn record_drift(crew_call: &str, job: &str, department: &str, in_sync: Option<bool>, result: &Value) -> Result<()> {
    execute(
        include_str!("../sql/queries/record_drift.sql"),
        &[crew_call.into(), job.into(), department.into(), in_sync.into(), JsonB(result.clone()).into()],
    )
}

/// The log row of one department's sync.
pub struct LogEntry<'a> {
    pub job: &'a str,
    pub department: &'a str,
    pub duration_ms: i32,
    pub counts: [i32; 6],
    pub status: &'a str,
    pub errors: Value,
    pub summary: Value,
    pub triggered_by: &'a str,
}
