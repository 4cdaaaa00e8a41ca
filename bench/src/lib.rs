//! The servers under test, shared by both binaries.

pub mod servers;
