//! redis harness (being written).
