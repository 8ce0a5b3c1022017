//! Every SQL statement the sync runs, and nothing else. Sets are read as one jsonb value per
//! query and parsed with serde, so this file is the only place that knows the table layout.

use std::collections::HashMap;

use flex_sync_core::plan::{DbRow, DesiredTech, KnownLine, OrphanPolicy};
use flex_sync_core::protocol::{CrewInput, LineRecord, Writes};
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
    /// plan cache revalidates them when the objects they use change.
    static PREPARED: std::cell::RefCell<HashMap<&'static str, pgrx::spi::OwnedPreparedStatement>> =
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
            if !prepared.contains_key(sql) {
                let types: Vec<pgrx::pg_sys::PgOid> = args.iter().map(|a| a.oid().into()).collect();
                prepared.insert(sql, client.prepare_mut(sql, &types)?.keep());
            }
            let statement = prepared.get(sql).expect("inserted above");
            client.update(statement, Some(1), args)?.first().get_one::<T>()
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
    decode(first_value::<JsonB>(sql, args)?)
}

fn query_json_prepared<T: DeserializeOwned>(sql: &'static str, args: &[DatumWithOid<'_>]) -> Result<T> {
    decode(first_value_prepared::<JsonB>(sql, args)?)
}

fn decode<T: DeserializeOwned>(value: Option<JsonB>) -> Result<T> {
    serde_json::from_value(value.map(|j| j.0).unwrap_or(Value::Null)).map_err(|e| FlexSyncError::Decode(e.to_string()))
}

fn execute(sql: &str, args: &[DatumWithOid<'_>]) -> Result<()> {
    Ok(Spi::run_with_args(sql, args)?)
}

/// The overridable authorization rule (`flex_sync_private.authorize()`); it raises 42501 itself.
pub fn authorize() -> Result<()> {
    Ok(Spi::run("SELECT flex_sync_private.authorize()")?)
}

/// The application tables exist and `flex_crew_assignments` has a unique index ON CONFLICT can
/// use on exactly (crew_call_id, technician_id), whatever its name
/// (`flex_sync_private.pair_unique_index()`, which raises 42P16 itself for a deferrable one).
pub fn check_application_schema() -> Result<()> {
    #[derive(Deserialize)]
    struct Check {
        missing: Option<String>,
        unique: Option<bool>,
    }
    let check: Check = query_json(
        "SELECT jsonb_build_object(
             'missing', (SELECT 'public.' || t FROM unnest(ARRAY['jobs', 'profiles', 'job_assignments',
                             'flex_crew_calls', 'flex_crew_assignments']) t
                         WHERE to_regclass('public.' || t) IS NULL LIMIT 1),
             'unique', flex_sync_private.pair_unique_index() IS NOT NULL)",
        &[],
    )?;
    match check {
        Check { missing: Some(table), .. } => Err(FlexSyncError::MissingTable(table)),
        Check { unique: Some(true), .. } => Ok(()),
        _ => Err(FlexSyncError::NoUniqueConstraint),
    }
}

/// Of `candidates` (trimmed, lower-cased), those that are known: a standard department, or one
/// some crew call uses. The table is read only for non-standard names, so the common call costs
/// nothing however many crew calls there are.
pub fn known_departments(candidates: &[String]) -> Result<Vec<String>> {
    let standard = flex_sync_core::input::STANDARD_DEPARTMENTS;
    let (mut known, others): (Vec<String>, Vec<String>) =
        candidates.iter().cloned().partition(|c| standard.contains(&c.as_str()));
    if !others.is_empty() {
        let found: Option<Vec<String>> = query_json(
            "SELECT jsonb_agg(DISTINCT d) FROM unnest($1::text[]) d
             WHERE EXISTS (SELECT 1 FROM public.flex_crew_calls WHERE lower(btrim(department)) = d)",
            &[others.into()],
        )?;
        known.extend(found.unwrap_or_default());
    }
    Ok(known)
}

pub fn departments_with_crew_calls(job: &str) -> Result<Vec<String>> {
    let found: Option<Vec<String>> = query_json(
        "SELECT jsonb_agg(DISTINCT lower(btrim(department)) ORDER BY lower(btrim(department)))
         FROM public.flex_crew_calls WHERE job_id = $1::uuid",
        &[job.into()],
    )?;
    Ok(found.unwrap_or_default())
}

#[derive(Deserialize)]
pub struct StoredSettings {
    pub base_url: String,
    pub api_token: Option<String>,
    pub options: Value,
}

pub fn load_settings() -> Result<Option<StoredSettings>> {
    query_json(
        "SELECT to_jsonb(s) FROM flex_sync_private.effective_settings() s WHERE s.base_url IS NOT NULL",
        &[],
    )
}

/// Also forgets what was learnt about the previous endpoint (a spent hourly budget). A NULL
/// token keeps the stored one.
pub fn save_settings(base_url: &str, api_token: Option<&str>, options: &Value) -> Result<()> {
    execute("DELETE FROM flex_sync_private.flex_state", &[])?;
    execute(
        "INSERT INTO flex_sync_private.settings (base_url, options)
         VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE
         SET base_url = EXCLUDED.base_url, options = EXCLUDED.options, updated_at = now()",
        &[base_url.into(), JsonB(options.clone()).into()],
    )?;
    if let Some(token) = api_token {
        execute(
            "INSERT INTO flex_sync_private.api_token (api_token) VALUES ($1)
             ON CONFLICT (singleton) DO UPDATE SET api_token = EXCLUDED.api_token",
            &[token.into()],
        )?;
    }
    Ok(())
}

pub fn forget_token() -> Result<()> {
    execute("DELETE FROM flex_sync_private.api_token", &[])
}

pub fn stored_options() -> Result<Value> {
    let found: Option<Value> = query_json("SELECT options FROM flex_sync_private.settings", &[])?;
    Ok(found.unwrap_or_else(|| Value::Object(Default::default())))
}

pub fn token_is_set() -> Result<bool> {
    Ok(first_value::<bool>("SELECT api_token IS NOT NULL FROM flex_sync_private.effective_settings()", &[])?
        .unwrap_or(false))
}

/// Flex's hourly budget is shared by every key of the customer: once a sync saw it spent, the
/// following syncs do not call for a while (they report `flex_rate_limited` straight away).
pub const RATE_LIMIT_PAUSE: &str = "5 minutes";

pub fn note_rate_limited() -> Result<()> {
    execute(
        "INSERT INTO flex_sync_private.flex_state (singleton, rate_limited_until) VALUES (true, clock_timestamp() + $1::interval)
         ON CONFLICT (singleton) DO UPDATE SET rate_limited_until = EXCLUDED.rate_limited_until",
        &[RATE_LIMIT_PAUSE.into()],
    )
}

/// What a call needs to know about its session before it starts, read in one statement.
#[derive(Deserialize)]
pub struct CallContext {
    pub isolation: String,
    pub job_exists: bool,
    /// The database role that called, as PostgREST sets it (`SET LOCAL ROLE`), and the JWT
    /// subject.
    pub caller: String,
    /// Milliseconds left before `statement_timeout` ends this statement; None without one.
    pub time_left_ms: Option<i64>,
    /// Whether a recent sync found Flex's hourly budget spent (see `note_rate_limited`).
    pub rate_limited: bool,
}

pub fn call_context(job: &str) -> Result<CallContext> {
    query_json_prepared(
        "SELECT jsonb_build_object(
             'isolation', current_setting('transaction_isolation'),
             'job_exists', EXISTS (SELECT 1 FROM public.jobs WHERE id = $1::uuid),
             'caller', coalesce(nullif(current_setting('role'), 'none'), session_user::text)
                       || coalesce(' sub=' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), ''),
             'time_left_ms', CASE WHEN current_setting('statement_timeout') IN ('0', '0ms') THEN NULL
                             ELSE (extract(epoch FROM current_setting('statement_timeout')::interval) * 1000
                                   - extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint
                             END,
             'rate_limited', coalesce((SELECT rate_limited_until > now() FROM flex_sync_private.flex_state), false))",
        &[job.into()],
    )
}

/// Takes the crew call's advisory lock for the rest of the transaction (`wait` false: only if
/// free). Its key is `flex_sync_private.item_lock()`'s, which the queue uses; it is spelled out
/// here because the library is replaced before `ALTER EXTENSION flex_sync UPDATE` runs, and a
/// sync must keep working against the previous release's SQL in between (a queue test holds
/// the lock by item_lock() and sees this sync find it busy).
pub fn lock_department(job: &str, department: &str, wait: bool) -> Result<bool> {
    let sql = if wait {
        "SELECT pg_advisory_xact_lock(x'464C5853'::integer, hashtext($1::uuid::text || '/' || $2)) IS NOT NULL"
    } else {
        "SELECT pg_try_advisory_xact_lock(x'464C5853'::integer, hashtext($1::uuid::text || '/' || $2))"
    };
    Ok(first_value_prepared::<bool>(sql, &[job.into(), department.into()])?.unwrap_or(false))
}

/// A crew call as the database holds it, read after the lock is held: its id, and the
/// protocol's input.
pub struct StoredCrew {
    pub id: String,
    pub input: CrewInput,
}

/// One statement for the whole read: it is most of a no-change sync's database time.
pub fn load_crew(job: &str, department: &str, orphan_policy: OrphanPolicy) -> Result<Option<StoredCrew>> {
    #[derive(Deserialize)]
    struct Desired {
        t: String,
        r: String,
        c: Option<String>,
    }
    #[derive(Deserialize)]
    struct Row {
        t: String,
        l: String,
    }
    #[derive(Deserialize)]
    struct Known {
        l: String,
        c: bool,
        r: Option<String>,
    }
    #[derive(Deserialize)]
    struct Stored {
        id: String,
        element: String,
        desired: Option<Vec<Desired>>,
        rows: Option<Vec<Row>>,
        known: Option<Vec<Known>>,
        audited: Option<Vec<String>>,
        roles: Option<HashMap<String, String>>,
    }
    let stored: Option<Stored> = query_json_prepared(
        "SELECT jsonb_build_object(
             'id', c.id,
             'element', c.flex_element_id,
             'desired', (SELECT jsonb_agg(jsonb_build_object('t', d.technician_id, 'r', d.flex_resource_id, 'c', d.role_code))
                         FROM flex_sync_private.desired_crew($1::uuid, $2) d),
             'rows', (SELECT jsonb_agg(jsonb_build_object('t', a.technician_id, 'l', a.flex_line_item_id))
                      FROM public.flex_crew_assignments a WHERE a.crew_call_id = c.id),
             'known', (SELECT jsonb_agg(jsonb_build_object('l', l.flex_line_item_id, 'c', l.created_by_sync, 'r', l.applied_role))
                       FROM flex_sync_private.lines l WHERE l.flex_element_id = c.flex_element_id),
             'audited', (SELECT jsonb_agg(DISTINCT d.flex_line_item_id) FROM public.flex_dedupe_audit d
                         WHERE d.crew_call_id = c.id AND d.flex_line_item_id IS NOT NULL),
             'roles', (SELECT jsonb_object_agg(b.tier, b.business_role_id)
                       FROM public.flex_sync_business_roles b WHERE b.department = $2))
         FROM public.flex_crew_calls c WHERE c.job_id = $1::uuid AND lower(btrim(c.department)) = $2",
        &[job.into(), department.into()],
    )?;
    Ok(stored.map(|s| {
        let mut known: HashMap<String, KnownLine> = s
            .known
            .unwrap_or_default()
            .into_iter()
            .map(|k| (k.l, KnownLine { created_by_sync: k.c, applied_role: k.r }))
            .collect();
        // A line a removed duplicate row pointed at is a contact the application made.
        for line in s.audited.unwrap_or_default() {
            known.entry(line).or_default().created_by_sync = true;
        }
        let input = CrewInput {
            department: department.to_string(),
            flex_element_id: s.element,
            orphan_policy,
            desired: s
                .desired
                .unwrap_or_default()
                .into_iter()
                .map(|d| DesiredTech { technician_id: d.t, resource_id: d.r, role_code: d.c })
                .collect(),
            rows: s.rows.unwrap_or_default().into_iter().map(|r| DbRow { technician_id: r.t, line_id: r.l }).collect(),
            known,
            roles: RoleMap(
                s.roles
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(tier, id)| Some((tier.chars().next()?, id)))
                    .collect(),
            ),
        };
        StoredCrew { id: s.id, input }
    }))
}

/// Records what Flex confirmed for one crew call, in the order the protocol's writes name.
pub fn write_outcome(crew_call: &str, element: &str, writes: &Writes) -> Result<()> {
    delete_rows_of_technicians(crew_call, &writes.stale_technicians)?;
    delete_rows_of_lines(crew_call, &writes.deleted_lines)?;
    upsert_rows(crew_call, &writes.rows)?;
    forget_lines(&writes.deleted_lines)?;
    record_lines(element, &writes.line_records)
}

fn delete_rows_of_technicians(crew_call: &str, technicians: &[String]) -> Result<()> {
    if technicians.is_empty() {
        return Ok(());
    }
    execute(
        "DELETE FROM public.flex_crew_assignments
         WHERE crew_call_id = $1::uuid AND technician_id = ANY ($2::uuid[])",
        &[crew_call.into(), technicians.to_vec().into()],
    )
}

fn delete_rows_of_lines(crew_call: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    execute(
        "DELETE FROM public.flex_crew_assignments
         WHERE crew_call_id = $1::uuid AND flex_line_item_id::text = ANY ($2::text[])",
        &[crew_call.into(), lines.to_vec().into()],
    )
}

/// The only way the sync writes an assignment row: ON CONFLICT, so concurrent writers (the app,
/// an old Edge Function still deployed) can never make a second row for one technician.
fn upsert_rows(crew_call: &str, rows: &[(String, String)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (technicians, lines): (Vec<String>, Vec<String>) = rows.iter().cloned().unzip();
    execute(
        "INSERT INTO public.flex_crew_assignments (crew_call_id, technician_id, flex_line_item_id)
         SELECT $1::uuid, t::uuid, l::uuid FROM unnest($2::text[], $3::text[]) AS u(t, l)
         ON CONFLICT (crew_call_id, technician_id)
         DO UPDATE SET flex_line_item_id = EXCLUDED.flex_line_item_id
         WHERE flex_crew_assignments.flex_line_item_id IS DISTINCT FROM EXCLUDED.flex_line_item_id",
        &[crew_call.into(), technicians.into(), lines.into()],
    )
}

/// A Flex line the sync now knows: `created_by_sync` is kept true once set; `applied_role` is
/// replaced only when a role was sent.
fn record_lines(element: &str, records: &[LineRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = records.iter().map(|r| r.line_id.clone()).collect();
    let resources: Vec<String> = records.iter().map(|r| r.resource_id.clone()).collect();
    let created: Vec<bool> = records.iter().map(|r| r.created_by_sync).collect();
    let roles: Vec<Option<String>> = records.iter().map(|r| r.applied_role.clone()).collect();
    execute(
        "INSERT INTO flex_sync_private.lines (flex_line_item_id, flex_element_id, resource_id, created_by_sync, applied_role)
         SELECT l, $1::uuid, r, c, a FROM unnest($2::text[], $3::text[], $4::bool[], $5::text[]) AS u(l, r, c, a)
         ON CONFLICT (flex_line_item_id) DO UPDATE
         SET created_by_sync = flex_sync_private.lines.created_by_sync OR EXCLUDED.created_by_sync,
             applied_role = coalesce(EXCLUDED.applied_role, flex_sync_private.lines.applied_role),
             resource_id = EXCLUDED.resource_id,
             updated_at = now()",
        &[element.into(), lines.into(), resources.into(), created.into(), roles.into()],
    )
}

fn forget_lines(lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    execute(
        "DELETE FROM flex_sync_private.lines WHERE flex_line_item_id = ANY ($1::text[])",
        &[lines.to_vec().into()],
    )
}

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

pub fn insert_log(entry: LogEntry<'_>) -> Result<()> {
    let [added, removed, kept, roles_set, failed, flex_calls] = entry.counts;
    first_value_prepared::<bool>(
        "INSERT INTO public.flex_sync_log (job_id, department, started_at, duration_ms, added, removed, kept,
                                    roles_set, failed, flex_calls, status, errors, summary, triggered_by)
         VALUES ($1::uuid, $2, clock_timestamp() - make_interval(secs => $3 / 1000.0), $3, $4, $5, $6,
                 $7, $8, $9, $10, $11, $12, $13)
         RETURNING true",
        &[
            entry.job.into(),
            entry.department.into(),
            entry.duration_ms.into(),
            added.into(),
            removed.into(),
            kept.into(),
            roles_set.into(),
            failed.into(),
            flex_calls.into(),
            entry.status.into(),
            JsonB(entry.errors).into(),
            JsonB(entry.summary).into(),
            entry.triggered_by.into(),
        ],
    )?;
    Ok(())
}
