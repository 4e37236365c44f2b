//! Exports: Prometheus metrics, the JSON forensics log, the recent records and the HTTP API that serves
//! them (with [`auth`] in front of `/api/*` when it is exposed). `observer run` feeds them; `observer tail` reads the API. Depends on records, never on kernel
//! types.

pub mod auth;
pub mod channels;
pub mod events;
pub mod http;
pub mod log;
pub mod metrics;
pub mod recent;
pub mod record;

use std::sync::Arc;

pub use auth::KubeAuth;
pub use http::{ApiArgs, ApiState, Readiness, Surface, UsageSource, serve};
pub use log::{LogArgs, LogError, LogWriter, Rotation};
pub use metrics::Metrics;
pub use recent::Recent;
pub use record::Record;

/// Where every record goes: the forensics log, the recent records (the API and `observer tail`) and
/// `observer_records_total`. `observer run` holds one and calls [`Exports::emit`] for each record.
pub struct Exports {
    pub log: LogWriter,
    pub recent: Arc<Recent>,
    pub metrics: Metrics,
}

impl Exports {
    pub fn new(log: LogWriter, recent: Arc<Recent>, metrics: Metrics) -> Self {
        Self {
            log,
            recent,
            metrics,
        }
    }

    /// Counts, logs and keeps one record. A log error is returned for the caller to report, but the
    /// record still reaches the API: a full disk must not hide it from `observer tail`.
    pub fn emit(&mut self, record: Record) -> Result<(), LogError> {
        self.emit_all(std::iter::once(record))
    }

    /// [`emit`](Self::emit) for a batch, flushing the log once. Every record is kept and counted; the first
    /// log error is returned.
    pub fn emit_all(&mut self, records: impl IntoIterator<Item = Record>) -> Result<(), LogError> {
        let mut first_error = None;
        let mut wrote = false;
        for record in records {
            self.metrics
                .records
                .with_label_values(&[record.kind.as_str()])
                .inc();
            if first_error.is_none()
                && let Err(e) = self.log.write_unflushed(&record)
            {
                first_error = Some(e);
            }
            wrote = true;
            self.recent.push(record);
        }
        if wrote
            && first_error.is_none()
            && let Err(e) = self.log.flush()
        {
            first_error = Some(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        serde_json::from_str(
            r#"{"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1",
            "protocol": "TCP", "src": {"ip": "198.18.1.2", "port": 40000, "kind": "pod"},
            "dst": {"ip": "198.18.2.2", "port": 50051, "kind": "pod"}, "direction": null,
            "kernel_reason": null, "attempts": 1, "policies": []}"#,
        )
        .expect("record")
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_record_the_log_cannot_take_still_reaches_the_api_and_the_count() {
        let log =
            LogWriter::file(log::Format::Json, "/dev/full", Rotation::default()).expect("open");
        let recent = Arc::new(Recent::new(10));
        let metrics = Metrics::new().expect("metrics");
        let mut exports = Exports::new(log, recent.clone(), metrics.clone());
        let e = exports.emit_all([record(), record()]).expect_err("ENOSPC");
        assert!(e.to_string().contains("/dev/full"), "{e}");
        assert_eq!(recent.len(), 2);
        assert_eq!(metrics.records.with_label_values(&["blocked"]).get(), 2);
    }

    #[test]
    fn emit_logs_keeps_and_counts() {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = LogWriter::writer(log::Format::Json, "test", Box::new(Shared(out.clone())));
        let recent = Arc::new(Recent::new(10));
        let metrics = Metrics::new().expect("metrics");
        let mut exports = Exports::new(log, recent.clone(), metrics.clone());
        exports.emit(record()).expect("emit");
        let line = String::from_utf8(out.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(
            serde_json::from_str::<Record>(line.trim()).expect("json"),
            record()
        );
        assert_eq!(recent.len(), 1);
        assert_eq!(metrics.records.with_label_values(&["blocked"]).get(), 1);
    }
}
