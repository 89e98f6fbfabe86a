//! samples harness (being written).
