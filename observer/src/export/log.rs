//! The forensics log: one [`Record`] per line, as JSON (schema 1) or as a human one-liner, to stdout or to a
//! file rotated by size. `observer run` writes every record it emits through a [`LogWriter`]; the one-liner
//! ([`Text`]) is also what `observer tail -o text` prints, so both read the same.
//!
//! A line is written with a single `write_all` and counted only once it is complete: rotation happens
//! between lines, and a failed write is cut back off the file, so no file ever holds half a record.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::record::{Endpoint, Record, rfc3339};

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Errors writing the forensics log. None of them is fatal to the daemon: the caller counts and logs them.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("opening forensics log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing forensics log to {target}: {source}")]
    Write {
        /// The file's path, or `stdout`.
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("rotating forensics log {from} to {to}: {source}")]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How records are written: `json` (the stable schema-1 contract) or `text` (for people).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Text,
}

/// Size-based rotation: `observer.log` → `observer.log.1` … `observer.log.{keep}`, the oldest dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would take the file past this size; 0 never rotates. A single line larger than
    /// this gets a file of its own rather than being split.
    pub max_bytes: u64,
    /// Rotated files kept; 0 keeps none (the file is truncated instead).
    pub keep: usize,
}

impl Rotation {
    pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
    pub const DEFAULT_KEEP: usize = 5;
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            keep: Self::DEFAULT_KEEP,
        }
    }
}

/// The forensics log flags of `observer run`: `#[command(flatten)]` them into its arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Forensics log format: `json` (one schema-1 record per line, the stable contract) or `text`.
    #[arg(long, env = "OBSERVER_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: Format,
    /// Write the forensics log to this file, rotated by size, instead of stdout.
    #[arg(long, env = "OBSERVER_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Rotate the log file before a record would take it past this size (bytes, or with a K/M/G suffix;
    /// 0 never rotates).
    #[arg(long, env = "OBSERVER_LOG_MAX_BYTES", default_value = "100M", value_parser = parse_size)]
    pub log_max_bytes: u64,
    /// Rotated log files kept (`observer.log.1` … `.N`, the oldest dropped; 0 truncates instead).
    #[arg(long, env = "OBSERVER_LOG_KEEP", default_value_t = Rotation::DEFAULT_KEEP)]
    pub log_keep: usize,
}

impl LogArgs {
    /// The writer these flags ask for: the file when `--log-file` is given, else stdout.
    pub fn open(&self) -> Result<LogWriter> {
        match &self.log_file {
            Some(path) => LogWriter::file(
                self.log_format,
                path,
                Rotation {
                    max_bytes: self.log_max_bytes,
                    keep: self.log_keep,
                },
            ),
            None => Ok(LogWriter::stdout(self.log_format)),
        }
    }
}

/// `1048576`, `512K`, `100M`, `1G` (powers of 1024; `KiB`, `MB`… and lower case accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("expected a size such as 1048576, 512K or 100M, got {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown size unit in {s:?} (expected K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Writes records, one per line, and flushes after each call (a record is on disk or on the pipe when
/// `write` returns).
pub struct LogWriter {
    format: Format,
    sink: Sink,
    /// Reused between records: one allocation for the daemon's life.
    line: Vec<u8>,
}

enum Sink {
    Stdout,
    Writer {
        name: String,
        out: Box<dyn Write + Send>,
    },
    File(RotatingFile),
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> Result<()> {
        match self {
            Self::File(f) => f.write_line(line),
            Self::Stdout => io::stdout()
                .lock()
                .write_all(line)
                .map_err(|source| LogError::Write {
                    target: "stdout".into(),
                    source,
                }),
            Self::Writer { name, out } => out.write_all(line).map_err(|source| LogError::Write {
                target: name.clone(),
                source,
            }),
        }
    }
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("format", &self.format)
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Records to the process's stdout (the container log).
    pub fn stdout(format: Format) -> Self {
        Self::with(format, Sink::Stdout)
    }

    /// Records to any writer; `name` is what errors call it.
    pub fn writer(format: Format, name: impl Into<String>, out: Box<dyn Write + Send>) -> Self {
        Self::with(
            format,
            Sink::Writer {
                name: name.into(),
                out,
            },
        )
    }

    /// Records appended to `path` (created if missing; its parent must exist), rotated by size.
    pub fn file(format: Format, path: impl Into<PathBuf>, rotation: Rotation) -> Result<Self> {
        Ok(Self::with(
            format,
            Sink::File(RotatingFile::open(path.into(), rotation)?),
        ))
    }

    fn with(format: Format, sink: Sink) -> Self {
        Self {
            format,
            sink,
            line: Vec::with_capacity(1024),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Where records go: the file's path or `stdout`.
    pub fn target(&self) -> String {
        match &self.sink {
            Sink::Stdout => "stdout".into(),
            Sink::Writer { name, .. } => name.clone(),
            Sink::File(f) => f.path.display().to_string(),
        }
    }

    /// Writes one record as one line, and flushes.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        self.write_all(std::iter::once(record))
    }

    /// Writes records, one line each, and flushes once at the end. Stops at the first error (the records
    /// before it are written).
    pub fn write_all<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) -> Result<()> {
        for record in records {
            self.write_unflushed(record)?;
        }
        self.flush()
    }

    /// Writes one record as one line without flushing: call [`flush`](Self::flush) after the batch.
    pub fn write_unflushed(&mut self, record: &Record) -> Result<()> {
        self.line.clear();
        encode(self.format, record, &mut self.line)?;
        self.sink.write_line(&self.line)
    }

    /// Flushes what the sink buffers (call on shutdown; `write` already flushes).
    pub fn flush(&mut self) -> Result<()> {
        let (target, r) = match &mut self.sink {
            Sink::Stdout => ("stdout".to_owned(), io::stdout().lock().flush()),
            Sink::Writer { name, out } => (name.clone(), out.flush()),
            Sink::File(f) => (f.path.display().to_string(), f.file.flush()),
        };
        r.map_err(|source| LogError::Write { target, source })
    }
}

/// One record as one line (with its `\n`) in the given format.
pub fn encode(format: Format, record: &Record, out: &mut Vec<u8>) -> Result<()> {
    match format {
        // The same bytes as serde_json's, written by hand (the daemon's hot path).
        Format::Json => record.write_json(out),
        Format::Text => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{}", Text(record));
        }
    }
    out.push(b'\n');
    Ok(())
}

/// An append-only file that rotates before a line would take it past `max_bytes`.
struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    /// Bytes of complete lines in the file (what is there when we open it, then what we append).
    size: u64,
}

impl RotatingFile {
    fn open(path: PathBuf, rotation: Rotation) -> Result<Self> {
        let (file, size) = open_append(&path)?;
        Ok(Self {
            path,
            rotation,
            file,
            size,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> Result<()> {
        let len = line.len() as u64;
        if self.rotation.max_bytes > 0
            && self.size > 0
            && self.size.saturating_add(len) > self.rotation.max_bytes
        {
            self.rotate()?;
        }
        if let Err(source) = self.file.write_all(line) {
            // Disk full or similar: cut the partial line back off so that the file stays whole lines. The
            // file is in append mode, so the next write goes after what is left.
            if let Err(e) = self.file.set_len(self.size) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot cut a partial record off the forensics log");
            }
            return Err(LogError::Write {
                target: self.path.display().to_string(),
                source,
            });
        }
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        if self.rotation.keep == 0 {
            self.file.set_len(0).map_err(|source| LogError::Write {
                target: self.path.display().to_string(),
                source,
            })?;
            self.size = 0;
            return Ok(());
        }
        // Oldest first, so that nothing is overwritten: drop .keep, .i → .i+1, then the live file → .1.
        let oldest = numbered(&self.path, self.rotation.keep);
        match fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LogError::Rotate {
                    from: oldest.clone(),
                    to: oldest,
                    source,
                });
            }
        }
        for i in (1..self.rotation.keep).rev() {
            rename_if_exists(&numbered(&self.path, i), &numbered(&self.path, i + 1))?;
        }
        rename_if_exists(&self.path, &numbered(&self.path, 1))?;
        // Until this succeeds the old handle keeps writing to what is now `.1`: nothing is lost.
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<(File, u64)> {
    let open = || -> io::Result<(File, u64)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    };
    open().map_err(|source| LogError::Open {
        path: path.to_owned(),
        source,
    })
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::Rotate {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        }),
    }
}

/// `observer.log` → `observer.log.3`.
fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// A record as a human one-liner: time, kind, src → dst, cause, direction, policies with their nearest miss,
/// kernel reason, interface, attempts, notes. The single formatter for `--log-format text` and `observer
/// tail -o text`.
///
/// ```text
/// 2026-11-26T14:02:03.123Z blocked shop/checkout-7d9f:40312 → payments/payments-0:50051 cause=policy direction=ingress policies=[payments/default-deny (ingress, rv 81233, nearest miss: no rules)] kernel=NETFILTER_DROP at nft_do_chain+0x3e8 interface=veth12ab attempts=4
/// 2026-11-26T14:02:03.123Z blocked shop/checkout-7d9f:40312 → payments/payments-0:8443 via=svc/payments/payments(198.18.200.10:50051) cause=policy …
/// ```
pub struct Text<'a>(pub &'a Record);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(f, "{} {}", rfc3339::format(r.time), r.kind.as_str())?;
        if !r.src.is_none() || !r.dst.is_none() {
            write!(f, " {} → {}", Peer(&r.src), Peer(&r.dst))?;
        }
        if let Some(p) = &r.detail.policy_change {
            let id = if p.namespace.is_empty() {
                format!("{}/{}", p.kind, p.name)
            } else {
                format!("{}/{}", p.namespace, p.name)
            };
            write!(
                f,
                " {id} {} rv={} ({}) made_stale={} allowed_again={}",
                p.op.as_str(),
                p.resource_version,
                p.summary,
                p.made_stale,
                p.allowed_again
            )?;
        }
        if let Some(l) = &r.detail.lost {
            write!(
                f,
                " lost={} since={} total={}",
                l.events,
                rfc3339::format(l.since),
                l.total
            )?;
        }
        if let Some(c) = &r.detail.channel {
            write!(f, " channel={} up={:.0}s", c.id, c.up_seconds)?;
            if let Some(change) = &c.change {
                write!(f, " change=[{change}]")?;
            }
        }
        if !r.protocol.eq_ignore_ascii_case("TCP") {
            write!(f, " protocol={}", r.protocol)?;
        }
        if !r.service.is_empty() {
            f.write_str(" via=")?;
            for (i, svc) in r.service.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "svc/{}/{}", svc.namespace, svc.name)?;
                match svc.ip {
                    Some(ip) => write!(f, "({})", SocketAddr::new(ip, svc.port))?,
                    None => write!(f, "(headless:{})", svc.port)?,
                }
            }
        }
        if let Some(cause) = r.cause {
            write!(f, " cause={}", cause.as_str())?;
        }
        if let Some(direction) = r.direction {
            write!(f, " direction={}", direction.as_str())?;
        }
        if !r.policies.is_empty() {
            f.write_str(" policies=[")?;
            for (i, p) in r.policies.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(
                    f,
                    "{} ({}, rv {}",
                    p.id(),
                    p.direction.as_str(),
                    p.resource_version
                )?;
                if let Some(changed) = &p.changed_at {
                    write!(f, ", changed {changed}")?;
                }
                write!(f, ", nearest miss: {})", p.nearest_miss)?;
            }
            f.write_str("]")?;
        }
        if let Some(reason) = &r.kernel_reason {
            write!(f, " kernel={reason}")?;
            if let Some(site) = &r.call_site {
                write!(f, " at {site}")?;
            }
        }
        if let Some(iface) = &r.interface {
            write!(f, " interface={iface}")?;
        }
        if let Some(e) = &r.evidence {
            if let Some(d) = &e.drop
                && r.kernel_reason.is_none()
            {
                write!(f, " kernel={} at {}", d.reason, d.call_site)?;
            }
            if let Some(d) = &e.drop
                && d.interface.is_none()
            {
                f.write_str(" drop=elsewhere")?;
            }
            if let Some(reset) = e.reset {
                write!(f, " reset={}", reset.side.as_str())?;
            }
            if let Some(icmp) = e.icmp {
                write!(f, " icmp={}/{}", icmp.icmp_type, icmp.code)?;
            }
            if e.established {
                f.write_str(" established")?;
            }
            if let Some(r) = e.retransmits {
                write!(f, " rtos={} by={}", r.rtos, r.side.as_str())?;
            }
            if let Some(n) = &e.other_node {
                write!(f, " evidence_on={n}")?;
            }
            if let Some(d) = &e.dnat {
                write!(f, " dnat={}", d.seen_in)?;
            }
        }
        write!(f, " attempts={}", r.attempts)?;
        if !r.notes.is_empty() {
            write!(f, " notes=[{}]", r.notes.join("; "))?;
        }
        if !r.node.is_empty() {
            write!(f, " node={}", r.node)?;
        }
        Ok(())
    }
}

/// An endpoint by name when the inventory knew it (`ns/pod:port`, `node/n1:port`), else by address.
struct Peer<'a>(&'a Endpoint);

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        match (e.namespace.as_deref(), e.pod.as_deref(), e.node.as_deref()) {
            (Some(ns), Some(pod), _) => write!(f, "{ns}/{pod}:{}", e.port),
            (_, None, Some(node)) if e.kind == "node" => write!(f, "node/{node}:{}", e.port),
            _ => write!(f, "{}", SocketAddr::new(e.ip, e.port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::record::{Cause, Directions, PolicyRef, RecordKind};

    fn record(n: u32) -> Record {
        let json = format!(
            r#"{{"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1", "interface": "veth12ab",
            "protocol": "TCP",
            "src": {{"ip": "198.18.1.2", "port": {port}, "kind": "pod", "namespace": "shop", "pod": "checkout-7d9f", "workload": "Deployment/checkout"}},
            "dst": {{"ip": "198.18.2.2", "port": 50051, "kind": "pod", "namespace": "payments", "pod": "payments-0", "workload": "StatefulSet/payments"}},
            "cause": "policy", "direction": "ingress", "kernel_reason": "NETFILTER_DROP", "attempts": 4,
            "policies": [{{"namespace": "payments", "name": "default-deny", "direction": "ingress", "uid": "u1",
                          "resource_version": "81233", "nearest_miss": "no rules"}}]}}"#,
            port = 40000 + n
        );
        serde_json::from_str(&json).expect("record")
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "observer-log-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("scratch dir");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn line_len(format: Format) -> u64 {
        let mut v = Vec::new();
        encode(format, &record(0), &mut v).expect("encode");
        v.len() as u64
    }

    fn read_records(path: &Path) -> Vec<Record> {
        let text = fs::read_to_string(path).expect("read log");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            path.display()
        );
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line is a whole record"))
            .collect()
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12X").expect_err("unit").contains("\"12X\""));
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999G").is_err());
    }

    #[test]
    fn log_flags_flatten_into_a_command_and_open_the_right_sink() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            log: LogArgs,
        }
        let dir = Scratch::new("args");
        let path = dir.0.join("observer.log");
        let run = Run::try_parse_from([
            "run".as_ref(),
            "--log-format".as_ref(),
            "text".as_ref(),
            "--log-file".as_ref(),
            path.as_os_str(),
            "--log-max-bytes".as_ref(),
            "10M".as_ref(),
            "--log-keep".as_ref(),
            "3".as_ref(),
        ])
        .expect("parse");
        assert_eq!(run.log.log_format, Format::Text);
        assert_eq!(run.log.log_max_bytes, 10 << 20);
        assert_eq!(run.log.log_keep, 3);
        let mut w = run.log.open().expect("open");
        assert_eq!(w.target(), path.display().to_string());
        w.write(&record(1)).expect("write");
        assert!(
            fs::read_to_string(&path)
                .expect("read")
                .contains("shop/checkout-7d9f:40001")
        );

        let defaults = Run::try_parse_from(["run"]).expect("parse");
        assert_eq!(defaults.log.log_format, Format::Json);
        assert_eq!(defaults.log.log_max_bytes, Rotation::DEFAULT_MAX_BYTES);
        assert_eq!(defaults.log.open().expect("stdout").target(), "stdout");
    }

    #[test]
    fn json_lines_are_schema_1_records() {
        let mut out = Vec::new();
        encode(Format::Json, &record(1), &mut out).expect("encode");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["kind"], "blocked");
        assert_eq!(v["src"]["port"], 40001);
    }

    #[test]
    fn text_one_liner_snapshot() {
        let mut r = record(312);
        r.call_site = Some("nft_do_chain+0x3e8".into());
        let mut policies = r.policies.to_vec();
        policies.push(PolicyRef {
            kind: "NetworkPolicy".into(),
            namespace: "payments".into(),
            name: "allow-frontend".into(),
            direction: Directions::Ingress,
            uid: "u2".into(),
            resource_version: "81234".into(),
            nearest_miss: "rule 0 allows TCP 8080, not TCP 50051".into(),
            changed_at: Some("2026-11-26T14:01:58.000Z".into()),
            rule: None,
        });
        r.policies = policies.into();
        assert_eq!(
            Text(&r).to_string(),
            "2026-11-26T14:02:03.123Z blocked shop/checkout-7d9f:40312 → payments/payments-0:50051 \
             cause=policy direction=ingress \
             policies=[payments/default-deny (ingress, rv 81233, nearest miss: no rules), \
             payments/allow-frontend (ingress, rv 81234, changed 2026-11-26T14:01:58.000Z, nearest miss: rule 0 allows TCP 8080, not TCP 50051)] \
             kernel=NETFILTER_DROP at nft_do_chain+0x3e8 interface=veth12ab attempts=4 node=n1"
        );
    }

    #[test]
    fn text_names_the_services_a_channel_went_through() {
        use crate::export::record::ServiceRef;
        let mut r = record(312);
        r.policies = Default::default();
        r.kernel_reason = None;
        r.interface = None;
        r.dst.port = 8443;
        r.service = vec![ServiceRef {
            namespace: "payments".into(),
            name: "payments".into(),
            ip: Some("198.18.200.10".parse().expect("ip")),
            port: 50051,
        }];
        assert_eq!(
            Text(&r).to_string(),
            "2026-11-26T14:02:03.123Z blocked shop/checkout-7d9f:40312 → payments/payments-0:8443 \
             via=svc/payments/payments(198.18.200.10:50051) cause=policy direction=ingress attempts=4 node=n1"
        );
        r.service.push(ServiceRef {
            namespace: "payments".into(),
            name: "payments-headless".into(),
            ip: None,
            port: 8443,
        });
        r.cause = Some(Cause::NoEndpoints);
        r.direction = None;
        assert!(
            Text(&r).to_string().contains(
                "via=svc/payments/payments(198.18.200.10:50051),svc/payments/payments-headless(headless:8443) cause=no_endpoints"
            ),
            "{}",
            Text(&r)
        );
    }

    #[test]
    fn text_shows_external_and_node_ends_by_address_and_says_what_is_unknown() {
        let mut r = record(0);
        r.kind = RecordKind::Blocked;
        r.src = Endpoint {
            ip: "fd00::1".parse().expect("ip"),
            port: 40000,
            kind: "external".into(),
            namespace: None,
            pod: None,
            node: None,
            workload: None,
        };
        r.dst.kind = "node".into();
        r.dst.namespace = None;
        r.dst.pod = None;
        r.dst.node = Some("n2".into());
        r.cause = Some(Cause::Unknown);
        r.direction = None;
        r.kernel_reason = None;
        r.interface = None;
        r.policies = Default::default();
        r.notes = vec!["inventory not synced".into()];
        r.node = "".into();
        r.protocol = "SCTP".into();
        assert_eq!(
            Text(&r).to_string(),
            "2026-11-26T14:02:03.123Z blocked [fd00::1]:40000 → node/n2:50051 protocol=SCTP cause=unknown \
             attempts=4 notes=[inventory not synced]"
        );
    }

    #[test]
    fn text_shows_live_channel_policy_change_and_lost_events_details() {
        use crate::export::record::{ChannelSeen, Detail, Endpoint, Lost, PolicyChange, PolicyOp};
        let mut r = record(312);
        r.kind = RecordKind::StaleAllowed;
        r.cause = None;
        r.kernel_reason = None;
        r.detail.channel = Some(ChannelSeen {
            id: 7,
            established_at: r.time,
            up_seconds: 42.4,
            change: Some("NetworkPolicy payments/allow-checkout deleted (rv 81240)".into()),
        });
        let text = Text(&r).to_string();
        assert!(
            text.starts_with("2026-11-26T14:02:03.123Z stale_allowed shop/checkout-7d9f:40312 → "),
            "{text}"
        );
        assert!(
            text.contains(
                " channel=7 up=42s change=[NetworkPolicy payments/allow-checkout deleted (rv 81240)]"
            ),
            "{text}"
        );
        let mut r = record(1);
        r.kind = RecordKind::PolicyChanged;
        r.src = Endpoint::none();
        r.dst = Endpoint::none();
        r.policies = Default::default();
        r.cause = None;
        r.direction = None;
        r.kernel_reason = None;
        *r.detail = Detail {
            policy_change: Some(PolicyChange {
                kind: "NetworkPolicy".into(),
                namespace: "payments".into(),
                name: "allow-checkout".into(),
                op: PolicyOp::Deleted,
                resource_version: "81240".into(),
                previous_resource_version: None,
                summary: "deleted".into(),
                made_stale: 3,
                allowed_again: 0,
            }),
            lost: Some(Lost {
                events: 5,
                since: r.time,
                total: 9,
            }),
            ..Detail::default()
        };
        let text = Text(&r).to_string();
        assert!(!text.contains('→'), "{text}");
        assert!(
            text.contains(
                "policy_changed payments/allow-checkout deleted rv=81240 (deleted) made_stale=3 allowed_again=0"
            ),
            "{text}"
        );
        assert!(
            text.contains(" lost=5 since=2026-11-26T14:02:03.123Z total=9"),
            "{text}"
        );
    }

    #[test]
    fn text_shows_the_evidence_apart_from_the_verdict() {
        use crate::export::record::{Evidence, IcmpSeen, ResetSeen, ResetSide};
        let mut r = record(312);
        r.cause = Some(Cause::NoListener);
        r.direction = None;
        r.kernel_reason = None;
        r.policies = Default::default();
        r.evidence = Some(Evidence {
            syn_retransmits: 0,
            reset: Some(ResetSeen {
                side: ResetSide::Destination,
            }),
            ..Evidence::default()
        });
        assert!(
            Text(&r)
                .to_string()
                .contains("cause=no_listener interface=veth12ab reset=destination attempts=4"),
            "{}",
            Text(&r)
        );
        r.evidence = Some(Evidence {
            icmp: Some(IcmpSeen {
                icmp_type: 3,
                code: 13,
            }),
            other_node: Some("n2".into()),
            ..Evidence::default()
        });
        assert!(Text(&r).to_string().contains("icmp=3/13 evidence_on=n2"));
        r.evidence = Some(Evidence {
            other_node: Some("n2".into()),
            dnat: Some(crate::export::record::DnatSeen {
                ip: "198.18.1.2".parse().expect("ip"),
                port: 50051,
                seen_in: "conntrack".into(),
            }),
            ..Evidence::default()
        });
        assert!(
            Text(&r)
                .to_string()
                .contains(" evidence_on=n2 dnat=conntrack attempts=4"),
            "{}",
            Text(&r)
        );
        r.kind = RecordKind::Unenforced;
        r.cause = None;
        r.direction = Some(Directions::Ingress);
        r.evidence = Some(Evidence {
            established: true,
            ..Evidence::default()
        });
        assert!(
            Text(&r).to_string().starts_with(
                "2026-11-26T14:02:03.123Z unenforced shop/checkout-7d9f:40312 → payments/payments-0:50051 direction=ingress"
            ),
            "{}",
            Text(&r)
        );
        assert!(Text(&r).to_string().contains(" established attempts=4"));
        r.kind = RecordKind::Interrupted;
        r.evidence = Some(Evidence {
            established: true,
            retransmits: Some(crate::export::record::RetransmitsSeen {
                rtos: 3,
                since: std::time::SystemTime::UNIX_EPOCH,
                side: crate::export::record::ChannelSide::Server,
            }),
            ..Evidence::default()
        });
        assert!(
            Text(&r)
                .to_string()
                .contains(" established rtos=3 by=server attempts=4"),
            "{}",
            Text(&r)
        );
    }

    #[test]
    fn text_lines_never_contain_a_newline() {
        let mut r = record(0);
        r.notes = vec!["a".into()];
        let mut out = Vec::new();
        encode(Format::Text, &r, &mut out).expect("encode");
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn writer_sink_gets_one_line_per_record() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let shared = Shared::default();
        let mut w = LogWriter::writer(Format::Text, "test", Box::new(shared.clone()));
        let records = [record(1), record(2), record(3)];
        w.write_all(&records).expect("write");
        w.write(&record(4)).expect("write");
        let text = String::from_utf8(shared.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[3].contains("shop/checkout-7d9f:40004"), "{text}");
    }

    #[test]
    fn rotation_keeps_k_files_of_whole_lines_and_drops_the_oldest() {
        let dir = Scratch::new("rotate");
        let path = dir.0.join("observer.log");
        let len = line_len(Format::Json);
        // Three lines fit, the fourth rotates.
        let rotation = Rotation {
            max_bytes: 3 * len + len / 2,
            keep: 2,
        };
        let mut w = LogWriter::file(Format::Json, &path, rotation).expect("open");
        for n in 0..11 {
            w.write(&record(n)).expect("write");
        }
        w.flush().expect("flush");
        // 11 lines: .2 was [0,1,2] then dropped; .2 = [3,4,5], .1 = [6,7,8], live = [9,10].
        let ports = |p: &Path| -> Vec<u16> { read_records(p).iter().map(|r| r.src.port).collect() };
        assert_eq!(ports(&path), [40009, 40010]);
        assert_eq!(ports(&numbered(&path, 1)), [40006, 40007, 40008]);
        assert_eq!(ports(&numbered(&path, 2)), [40003, 40004, 40005]);
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files");
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let size = fs::metadata(&p).expect("metadata").len();
            assert!(
                size <= rotation.max_bytes,
                "{} is {size} bytes",
                p.display()
            );
        }
    }

    #[test]
    fn reopening_appends_and_counts_what_is_already_there() {
        let dir = Scratch::new("reopen");
        let path = dir.0.join("observer.log");
        let len = line_len(Format::Json);
        let rotation = Rotation {
            max_bytes: 2 * len,
            keep: 3,
        };
        {
            let mut w = LogWriter::file(Format::Json, &path, rotation).expect("open");
            w.write(&record(0)).expect("write");
        }
        let mut w = LogWriter::file(Format::Json, &path, rotation).expect("reopen");
        w.write(&record(1)).expect("write");
        // The file already holds two lines: the third rotates.
        w.write(&record(2)).expect("write");
        let ports = |p: &Path| -> Vec<u16> { read_records(p).iter().map(|r| r.src.port).collect() };
        assert_eq!(ports(&numbered(&path, 1)), [40000, 40001]);
        assert_eq!(ports(&path), [40002]);
    }

    #[test]
    fn a_line_larger_than_max_bytes_gets_a_file_of_its_own() {
        let dir = Scratch::new("huge");
        let path = dir.0.join("observer.log");
        let rotation = Rotation {
            max_bytes: 10,
            keep: 5,
        };
        let mut w = LogWriter::file(Format::Json, &path, rotation).expect("open");
        for n in 0..3 {
            w.write(&record(n)).expect("write");
        }
        assert_eq!(read_records(&path).len(), 1);
        assert_eq!(read_records(&numbered(&path, 1)).len(), 1);
        assert_eq!(read_records(&numbered(&path, 2)).len(), 1);
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = Scratch::new("keep0");
        let path = dir.0.join("observer.log");
        let len = line_len(Format::Json);
        let rotation = Rotation {
            max_bytes: 2 * len,
            keep: 0,
        };
        let mut w = LogWriter::file(Format::Json, &path, rotation).expect("open");
        for n in 0..5 {
            w.write(&record(n)).expect("write");
        }
        let ports: Vec<u16> = read_records(&path).iter().map(|r| r.src.port).collect();
        assert_eq!(ports, [40004]);
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn zero_max_bytes_never_rotates() {
        let dir = Scratch::new("norotate");
        let path = dir.0.join("observer.log");
        let rotation = Rotation {
            max_bytes: 0,
            keep: 2,
        };
        let mut w = LogWriter::file(Format::Text, &path, rotation).expect("open");
        for n in 0..20 {
            w.write(&record(n)).expect("write");
        }
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 20);
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn errors_name_the_path() {
        let dir = Scratch::new("errors");
        let path = dir.0.join("missing-dir").join("observer.log");
        let e = LogWriter::file(Format::Json, &path, Rotation::default()).expect_err("no parent");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_is_an_error_not_a_panic() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let mut w = LogWriter::file(Format::Json, "/dev/full", Rotation::default()).expect("open");
        let e = w.write(&record(0)).expect_err("ENOSPC");
        assert!(e.to_string().contains("/dev/full"), "{e}");
    }
}
