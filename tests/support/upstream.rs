//! upstream harness (being written).
