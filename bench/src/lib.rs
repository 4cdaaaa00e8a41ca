//! The servers under test, shared by the binaries, the hostile-client load that
//! `berth-hostile` runs and the MinIO helpers of the S3 benchmark.

pub mod hostile;
pub mod minio;
pub mod servers;
