//! The pure core of flex_sync: no Postgres, no network. Everything here is data in, data out, and
//! is tested with plain `cargo test -p flex_sync_core`.

pub mod endpoints;
pub mod flex_response;
pub mod guard;
pub mod ingest;
pub mod input;
pub mod plan;
pub mod protocol;
pub mod roles;
pub mod settings;
pub mod simulation;
