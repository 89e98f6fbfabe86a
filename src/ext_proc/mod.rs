//! The Envoy ext_proc server (being written).
