//! What the bench harnesses share: their command line ([`cli`]), spawning a child process and
//! measuring it ([`process`]), running the `stagewise` binary on a pipeline of theirs
//! ([`stagewise`]), a throwaway PostgreSQL cluster ([`pg`]), the medians of several runs ([`stats`]) and the report ([`report`]). Each
//! harness includes it with `mod common;` and uses a part of it.
#![allow(dead_code)]

pub mod cli;
pub mod pg;
pub mod process;
pub mod report;
pub mod stagewise;
pub mod stats;
