//! `securesock-bench`: securesock's load generator, and the bookkeeping subcommands the bench script
//! runs around it.
//!
//! - [`load`] (re-exported here, as the binary and the tests use it): the load generator itself,
//!   full, resumed, echo, plaintext, idle and established connections, and their report.
//! - [`tools`] and the modules behind it: `peer` (starting and stopping the servers measured),
//!   `held` (a burst held against one, measured meanwhile),
//!   `procfs` (sampling them), `record` and `stats` (one run's record, medians), `report` (each
//!   section's markdown) and `machine` (the machine and versions lines).
//!
//! The load generator never reads a server's /proc or writes a report; the tools never make a
//! load connection.

pub mod held;
pub mod load;
pub mod machine;
pub mod peer;
pub mod procfs;
pub mod record;
pub mod report;
pub mod stats;
pub mod tools;

pub use load::*;
