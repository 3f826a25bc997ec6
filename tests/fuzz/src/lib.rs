//! The fuzz targets, compiled here straight from `tests/src/fuzz/` (the same files the
//! stable tests use as `portcullis_tests::fuzz`), so the nightly build needs only the
//! product crates and not the process harness of `portcullis-tests`.

#[path = "../../src/fuzz/mod.rs"]
pub mod fuzz;
