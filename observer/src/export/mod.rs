//! Exports: Prometheus metrics, the JSON forensics log, the recent records and the HTTP API that serves
//! them. `observer run` feeds them; `observer tail` reads the API. Depends on records, never on kernel
//! types.

pub mod http;
pub mod log;
pub mod metrics;
pub mod recent;
pub mod record;

pub use http::{ApiState, Readiness, serve};
pub use log::{LogWriter, Rotation};
pub use metrics::Metrics;
pub use recent::Recent;
pub use record::Record;
