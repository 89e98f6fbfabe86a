//! scan_api (being written).
