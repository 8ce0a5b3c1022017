//! The SQL entry points. Each is a thin wrapper: convert arguments, call one function, raise its
//! error with a SQLSTATE.

use flex_sync_core::settings::{FlexOrigin, Options, SettingsError};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::error::{FlexSyncError, OrRaise};
use crate::store;
use crate::sync::{drift_check, plan_job, sync_job, SyncRequest};

/// Reconciles the job's crew calls with Flex. `departments` NULL means every department with a
/// crew call; `wait_for_lock` false skips (status `skipped`) a department another sync holds;
/// `force` applies the deletes the guard against mass deletion would hold (status `held`).
/// SECURITY DEFINER: it reads the private settings and writes the application's tables as the
/// extension's owner, as the Edge Function's service role did; who may call it is decided by
/// the EXECUTE grant and `flex_sync_private.authorize()`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn flex_sync_job(
    job_id: Option<pgrx::Uuid>,
    departments: default!(Option<Vec<Option<String>>>, "NULL"),
    wait_for_lock: default!(bool, true),
    force: default!(bool, false),
) -> JsonB {
    let request = SyncRequest { job: job_id.map(|j| j.to_string()), departments, wait_for_lock, force };
    JsonB(sync_job(request, &check_interrupts).or_raise("flex_sync_job"))
}

fn check_interrupts() {
    pgrx::check_for_interrupts!();
}

/// What `flex_sync_job` would do now, per department: adds, deletes with their reasons, role
/// changes, adoptions, stale rows and what the guard would hold. The same checks, authorization
/// and locks as a sync; one listing per crew call and nothing written (no row, no log row).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn flex_sync_plan(job_id: Option<pgrx::Uuid>, departments: default!(Option<Vec<Option<String>>>, "NULL")) -> JsonB {
    JsonB(plan_job(job_id.map(|j| j.to_string()), departments, &check_interrupts).or_raise("flex_sync_plan"))
}

/// Lists up to `max_crew_calls` crew calls, the least recently checked first, one Flex call each,
/// and records for each whether its contacts agree with the desired set and the rows
/// (`flex_sync_drift_status`). Returns the ones that drifted. SECURITY DEFINER; by default only
/// the owner may call it (pg_cron, a DBA).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn flex_sync_drift(max_crew_calls: default!(Option<i32>, 50)) -> JsonB {
    JsonB(drift_check(max_crew_calls, &check_interrupts).or_raise("flex_sync_drift"))
}

/// Stores the Flex endpoint, the token (NULL keeps the stored one; options naming a Vault secret
/// remove it) and options merged over the stored ones. Returns the effective settings with the
/// token masked. SECURITY DEFINER, so a role the owner grants EXECUTE needs nothing of the
/// private schema; by default only the owner may call it.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn flex_sync_configure(
    base_url: String,
    api_token: default!(Option<String>, "NULL"),
    options: default!(JsonB, "'{}'"),
) -> JsonB {
    JsonB(configure(&base_url, api_token.as_deref(), &options.0).or_raise("flex_sync_configure"))
}

fn configure(base_url: &str, api_token: Option<&str>, changes: &Value) -> Result<Value, FlexSyncError> {
    let options = Options::default().merged(&store::stored_options()?)?.merged(changes)?;
    let origin = FlexOrigin::parse(base_url, options.allow_insecure_loopback)?;
    let token = api_token.map(str::trim).filter(|t| !t.is_empty());
    if token.is_some() && options.api_token_vault_secret.is_some() {
        return Err(SettingsError::TokenAndVaultSecret.into());
    }
    store::save_settings(&origin.root(), token, &options.to_json())?;
    // With the token in Vault, a token stored before is never read again: it goes.
    if options.api_token_vault_secret.is_some() {
        store::forget_token()?;
    }
    Ok(json!({
        "base_url": origin.root(),
        "api_token": if store::token_is_set()? { json!("********") } else { Value::Null },
        "options": options.to_json(),
    }))
}
