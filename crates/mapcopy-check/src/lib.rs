//! Test machinery for mapcopy, shared by the contract tests, the CLI's demo
//! and torture commands: writers that run in other processes, fixtures, and
//! the oracle.

pub mod bench_writer;
pub mod child;
