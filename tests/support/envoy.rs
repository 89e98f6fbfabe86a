//! envoy harness (being written).
