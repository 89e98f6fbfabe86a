//! The verdict cache (being written).
