//! The servers under test, shared by both binaries, and the hostile-client load
//! that `berth-hostile` runs.

pub mod hostile;
pub mod servers;
