//! Exports: Prometheus metrics, the JSON forensics log, the HTTP API. Depends on records, never on kernel
//! types.

pub mod metrics;
pub mod record;

pub use record::Record;
