//! The source-preserving merge (`sql/merge.sql`): its statements are set-based SQL; the one rule
//! it shares with the crew sync, the guard against mass deletion, comes from the pure core.

#[pgrx::pg_schema]
mod flex_sync_private {
    use flex_sync_core::guard::Guard;
    use pgrx::prelude::*;

    /// Why `deletes` of an owner's `rows` would be held when the source has `source_rows` rows:
    /// the crew sync's guard (`core/src/guard.rs`), NULL when they may go.
    #[pg_extern(immutable, parallel_safe, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn guard_hold_reason(deletes: i64, rows: i64, source_rows: i64, max_delete_fraction: f64) -> Option<String> {
        let permille = (max_delete_fraction.clamp(0.0, 1.0) * 1000.0).round() as u32;
        let guard = Guard { max_delete_permille: permille, force: false };
        let count = |n: i64| usize::try_from(n).unwrap_or(0);
        guard.hold_reason(count(deletes), count(rows), count(source_rows)).map(|reason| reason.code().to_string())
    }
}
