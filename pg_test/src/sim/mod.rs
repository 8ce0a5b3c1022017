//! A faithful stand-in for Flex5's crew-call endpoints (CONTRIBUTING.md, "The Flex simulator"), with a control
//! API for tests: seeding, manual edits, fault injection, call counters.

pub mod model;
pub mod server;
