//! The idempotent ingest (`sql/ingest.sql`): PL/pgSQL applies the operations, one savepoint
//! each; the order they are applied in and which failures a retry can help come from the pure
//! core.

#[pgrx::pg_schema]
mod flex_sync_private {
    use crate::error::OrRaise;
    use flex_sync_core::ingest::{self, TableLinks};
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// The batch's operations in the order they are applied, each with its place in the batch
    /// (from 0) and why it cannot be applied (NULL when it can). `links`: each registered
    /// table's foreign-key columns and the registered table each one references. A batch that is
    /// not well formed raises 22023 and yields nothing.
    #[pg_extern(immutable, parallel_safe, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn ingest_order(
        batch: JsonB,
        links: JsonB,
    ) -> TableIterator<'static, (name!(position, i32), name!(problem, Option<String>))> {
        let links: TableLinks = serde_json::from_value(links.0).unwrap_or_else(|e| {
            pgrx::error!("flex_sync: the registered tables' links are not a map of maps: {e}")
        });
        let steps = ingest::order(&batch.0, &links).or_raise("flex_sync_ingest");
        TableIterator::new(steps.into_iter().map(|step| {
            let position = i32::try_from(step.position).expect("a batch is at most MAX_BATCH_OPERATIONS long");
            (position, step.problem.map(|p| p.to_string()))
        }))
    }

    /// Whether an operation that failed with this SQLSTATE may succeed if sent again unchanged.
    #[pg_extern(immutable, parallel_safe, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn ingest_retryable(sqlstate: &str) -> bool {
        ingest::is_retryable(sqlstate)
    }
}
