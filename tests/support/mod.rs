//! Test harness shared by the integration tests: real clamd, Redis, Envoy and a sample upstream,
//! each started on ephemeral ports in its own temp dir and stopped on drop.
#![allow(dead_code)]

pub mod clamd;
pub mod clamgate;
pub mod envoy;
pub mod redis;
pub mod samples;
pub mod stack;
pub mod upstream;
