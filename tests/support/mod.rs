//! Test harness shared by the integration tests: real clamd, Redis, Envoy, clamgate (in-process or
//! as a child process) and a sample upstream, each started on ephemeral ports in its own temp dir
//! and stopped on drop; plus generated bodies of any size and streaming HTTP clients for them.
#![allow(dead_code)]

pub mod clamd;
pub mod clamgate;
pub mod clamgate_process;
pub mod containers;
pub mod envoy;
pub mod gen;
pub mod http;
pub mod nginx;
pub mod redis;
pub mod samples;
pub mod scan;
pub mod stack;
pub mod tls;
pub mod upstream;
