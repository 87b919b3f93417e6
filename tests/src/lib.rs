//! Cross-crate tests live in tests/main.rs.
