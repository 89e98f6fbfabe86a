//! clamd harness (being written).
