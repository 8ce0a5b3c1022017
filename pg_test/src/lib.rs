//! Everything that tests flex_sync from outside the database: the Flex simulator (`sim`) and
//! the harness that drives a real PostgreSQL server from several connections (`harness`).

pub mod edge_function;
pub mod harness;
pub mod sim;
pub mod storm;
