//! The clamd client (being written).
