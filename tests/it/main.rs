//! The integration tests: one binary (one link, not one per area), a module per area. Each
//! runs the real `flagstore` binary, a real server or the library against real databases;
//! `common` holds what they share and `contract_tests!`, which runs a test on both backends.

#![allow(clippy::unwrap_used)] // a panic in a test is a failure naming its line

#[macro_use]
mod common;

mod audit_chain;
mod audit_queries;
mod batch;
mod browser;
mod cli;
mod evaluation_properties;
mod first_use;
mod hash_vectors;
mod hostile;
mod import_fuzz;
mod migration;
mod ofrep_python;
mod postgres;
mod prototype;
mod python_package;
mod reliability;
mod serve;
mod signed_heads;
mod stale;
mod web;
