//! flex_sync: keeps Flex Rental Solutions crew calls in step with a job's technicians.
//!
//! Layers, outermost first: `api` (the SQL entry points), `sync` (one call's flow), `store` (all
//! SQL), `flex_client` (all HTTP), and the pure core (reconcile plan, options, endpoints) in the
//! `flex_sync_core` crate. The queue, the health views, the dedupe, the merge, the ingest and the grants are
//! plain SQL in `sql/`.

mod api;
mod error;
mod flex_client;
mod ingest;
mod merge;
mod store;
mod sync;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/queue.sql", name = "queue", requires = ["schema"]);
pgrx::extension_sql_file!("../sql/health.sql", name = "health", requires = ["queue"]);
// One chain, so the install script comes out in the same order from every build.
pgrx::extension_sql_file!("../sql/dedupe.sql", name = "dedupe", requires = ["health"]);
pgrx::extension_sql_file!("../sql/merge.sql", name = "merge", requires = ["dedupe"]);
pgrx::extension_sql_file!("../sql/ingest.sql", name = "ingest", requires = ["merge"]);
pgrx::extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
