//! scanner (being written).
