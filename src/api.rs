//! The SQL entry points. Each is a thin wrapper: convert arguments, call one function, raise its
//! error with a SQLSTATE.

use flex_sync_core::dedupe::Dedupe;
use flex_sync_core::settings::{FlexOrigin, Options};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::error::{FlexSyncError, OrRaise};
use crate::scan;
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

    /// Replaced by `dedupe_plan` in 0.4.0. Its symbol stays because the released 0.3.0 install
    /// script declares it: that version must still install (and then update), and a database
    /// not yet updated gets this error rather than a missing symbol.
    #[pg_extern(sql = false)]
    fn dedupe_removals() -> bool {
        FlexSyncError::Replaced("flex_sync_private.dedupe_removals()").raise("flex_dedupe_assignments")
    }

    /// What `flex_dedupe_assignments()` does to `assignments` (flex_crew_assignments), as one
    /// row: the rows to remove by ctid in storage order with the id of the row each one's pair
    /// keeps, how many pairs have twins, and the (crew call, Flex line) pairs only removed rows
    /// point at, distinct and sorted. Reads the table once, never sorts it.
    #[pg_extern(volatile, parallel_unsafe)]
    fn dedupe_plan(
        assignments: pg_sys::Oid,
    ) -> TableIterator<
        'static,
        (
            name!(tids, Vec<pg_sys::ItemPointerData>),
            name!(keeper_ids, Vec<pgrx::Uuid>),
            name!(duplicate_groups, i64),
            name!(orphaned_crew_call_ids, Vec<pgrx::Uuid>),
            name!(orphaned_line_ids, Vec<pgrx::Uuid>),
        ),
    > {
        let mut dedupe = Dedupe::default();
        scan::scan_assignments(assignments, |row| dedupe.add(row)).or_raise("flex_dedupe_assignments");
        let outcome = dedupe.finish();
        let tids = outcome
            .removals
            .iter()
            .map(|r| {
                let mut tid = pg_sys::ItemPointerData::default();
                pgrx::itemptr::u64_to_item_pointer(r.row.address, &mut tid);
                tid
            })
            .collect();
        let keeper_ids = outcome.removals.iter().map(|r| pgrx::Uuid::from_bytes(r.keeper_id)).collect();
        let (calls, lines) =
            outcome.orphaned_lines.iter().map(|&(c, l)| (pgrx::Uuid::from_bytes(c), pgrx::Uuid::from_bytes(l))).unzip();
        TableIterator::once((tids, keeper_ids, outcome.duplicate_groups as i64, calls, lines))
    }
}
