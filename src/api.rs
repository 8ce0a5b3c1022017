//! The SQL entry points. Each is a thin wrapper: convert arguments, call one function, raise its
//! error with a SQLSTATE.

use flex_sync_core::dedupe::{Dedupe, Removal};
use flex_sync_core::settings::{FlexOrigin, Options};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::error::{FlexSyncError, OrRaise};
use crate::store;
use crate::sync::{sync_job, SyncRequest};

/// Reconciles the job's crew calls with Flex. `departments` NULL means every department with a
/// crew call; `wait_for_lock` false skips (status `skipped`) a department another sync holds.
#[pg_extern(volatile, parallel_unsafe)]
fn flex_sync_job(
    job_id: Option<pgrx::Uuid>,
    departments: default!(Option<Vec<Option<String>>>, "NULL"),
    wait_for_lock: default!(bool, true),
) -> JsonB {
    let request = SyncRequest { job: job_id.map(|j| j.to_string()), departments, wait_for_lock };
    let check_interrupts = || {
        pgrx::check_for_interrupts!();
    };
    JsonB(sync_job(request, &check_interrupts).or_raise("flex_sync_job"))
}

/// Stores the Flex endpoint, the token (NULL keeps the stored one) and options merged over the
/// stored ones. Returns the effective settings with the token masked.
#[pg_extern(volatile, parallel_unsafe)]
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
    store::save_settings(&origin.root(), token, &options.to_json())?;
    Ok(json!({
        "base_url": origin.root(),
        "api_token": if store::token_is_set()? { json!("********") } else { Value::Null },
        "options": options.to_json(),
    }))
}

/// Helpers the extension's own SQL calls, in the schema callers are not granted.
#[pg_schema]
mod flex_sync_private {
    use super::*;

    /// The rows `flex_dedupe_assignments()` removes, with the row each pair keeps and whether the
    /// removed row's Flex line is left without a row. Reads the table once, never sorts it.
    #[pg_extern(volatile, parallel_unsafe)]
    fn dedupe_removals() -> TableIterator<
        'static,
        (
            name!(tid, pg_sys::ItemPointerData),
            name!(crew_call_id, pgrx::Uuid),
            name!(technician_id, pgrx::Uuid),
            name!(flex_line_item_id, Option<pgrx::Uuid>),
            name!(keeper_id, pgrx::Uuid),
            name!(line_orphaned, bool),
        ),
    > {
        let removals = find_removals().or_raise("flex_dedupe_assignments");
        TableIterator::new(removals.into_iter().map(|r| {
            let mut tid = pg_sys::ItemPointerData::default();
            pgrx::itemptr::u64_to_item_pointer(r.row.address, &mut tid);
            (
                tid,
                pgrx::Uuid::from_bytes(r.row.crew_call_id),
                pgrx::Uuid::from_bytes(r.row.technician_id),
                r.row.line_id.map(pgrx::Uuid::from_bytes),
                pgrx::Uuid::from_bytes(r.keeper_id),
                r.line_orphaned,
            )
        }))
    }

    fn find_removals() -> Result<Vec<Removal>, FlexSyncError> {
        let mut dedupe = Dedupe::default();
        store::scan_assignments(|row| dedupe.add(row))?;
        Ok(dedupe.removals())
    }
}
