//! `observer tail`: prints the records of a running daemon from its HTTP API, as text one-liners (the
//! forensics log's own formatter) or JSON lines, and follows new ones unless told not to.
//!
//! Without following it asks `GET /api/v1/blocked?since=`; following, it asks `GET
//! /api/v1/blocked/stream?since=`, which replays from `since` and then goes live with nothing missed or
//! repeated in between. `--since` is sent as given, so a duration (`5m`) is measured on the daemon's clock.
//!
//! Exit codes: 0 when the records were printed (or stdout went away), 1 when the daemon could not be
//! reached or answered with an error.

use std::{io::Write, process::ExitCode, time::Duration};

use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, Uri, body::Bytes, header};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::export::{
    http::parse_since,
    log::{Format, Text},
    record::Record,
};

/// How long a request may take to connect or, without following, to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A followed stream with no line (not even a heartbeat) for this long is dead.
const SILENCE: Duration = Duration::from_secs(4 * crate::export::http::HEARTBEAT.as_secs());

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The daemon's records API, `observer run --api-listen` (`kubectl -n observer port-forward
    /// pod/observer-xxxxx 9991` makes a node's local).
    #[arg(long, env = "OBSERVER_SERVER", default_value = "http://127.0.0.1:9991")]
    pub server: String,
    /// Bearer token for an API exposed beyond loopback (`kubectl create token NAME`); it must be allowed
    /// `get` on `/api/v1/blocked` and `/api/v1/blocked/stream`.
    #[arg(long, env = "OBSERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Records from this long ago (`5m`, `2h`) or since this RFC 3339 time (`2026-11-26T14:00:00Z`).
    #[arg(long, env = "OBSERVER_SINCE", default_value = "5m", value_parser = check_since)]
    pub since: String,
    /// Only these record kinds, comma-separated (`blocked`, `unenforced`, `established`, `policy_changed`,
    /// `lost_events`, `stale_allowed`, `interrupted`), or `all`.
    #[arg(long, env = "OBSERVER_KIND", default_value = "all")]
    pub kind: String,
    /// Output format: one-line text, or the JSON records as the daemon serves them.
    #[arg(
        short = 'o',
        long,
        env = "OBSERVER_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Format,
    /// Keep printing records as they arrive (the default).
    #[arg(long, env = "OBSERVER_FOLLOW", overrides_with = "no_follow")]
    pub follow: bool,
    /// Print the records since `--since` and exit.
    #[arg(long, env = "OBSERVER_NO_FOLLOW", overrides_with = "follow")]
    pub no_follow: bool,
}

impl TailArgs {
    /// Following is the default; `--no-follow` turns it off (the last of the two flags wins).
    pub fn following(&self) -> bool {
        !self.no_follow
    }
}

fn check_since(s: &str) -> Result<String, String> {
    parse_since(s, std::time::SystemTime::now())
        .map(|_| s.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// Why `observer tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("--server {url}: {reason}")]
    BadServer { url: String, reason: String },
    #[error(
        "cannot connect to the observer daemon at {url}: {source} (is `observer run` listening there?)"
    )]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the observer daemon at {url} did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("talking to the observer daemon at {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the observer daemon at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("the observer daemon at {url} sent something that is not a list of records: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the observer daemon at {url} closed the stream (shutting down?)")]
    Closed { url: String },
    #[error("the observer daemon at {url} went silent for {after:?}")]
    Silent { url: String, after: Duration },
    /// stdout went away (`observer tail | head`): not worth a message.
    #[error("writing to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

/// Runs `observer tail`; see the module docs for the exit codes.
pub fn run(args: &TailArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("observer tail: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    match rt.block_on(tail(args, &mut out, &mut err)) {
        Ok(()) | Err(TailError::Stdout(_)) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "observer tail: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fetches (and follows) records from `args.server`, printing them to `out`; notices go to `err`.
pub async fn tail(
    args: &TailArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), TailError> {
    let mut server = Server::parse(&args.server)?;
    server.token.clone_from(&args.token);
    let query = format!(
        "since={}&kind={}",
        percent_encode(&args.since),
        percent_encode(&args.kind)
    );
    if !args.following() {
        let resp = server.get(&format!("/api/v1/blocked?{query}")).await?;
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| server.timeout())?
            .map_err(|source| server.http(source))?
            .to_bytes();
        let records: Vec<Box<RawValue>> =
            serde_json::from_slice(&body).map_err(|source| TailError::Decode {
                url: server.url.clone(),
                source,
            })?;
        for r in &records {
            print_line(args.output, r.get(), out, err)?;
        }
        return out.flush().map_err(TailError::Stdout);
    }

    let resp = server
        .get(&format!("/api/v1/blocked/stream?{query}"))
        .await?;
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(SILENCE, body.frame()).await {
            Err(_) => {
                return Err(TailError::Silent {
                    url: server.url.clone(),
                    after: SILENCE,
                });
            }
            Ok(None) => return Err(TailError::Closed { url: server.url }),
            Ok(Some(frame)) => frame.map_err(|source| server.http(source))?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        // Lines may arrive split across frames: print only the complete ones.
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            print_line(args.output, &String::from_utf8_lossy(&line), out, err)?;
        }
        out.flush().map_err(TailError::Stdout)?;
    }
}

/// Prints one served line: a record as text or JSON; a `missed` notice to `err`; heartbeats not at all.
/// Lines that are not records this version knows (a newer daemon's kinds) are printed as they came.
fn print_line(
    output: Format,
    line: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), TailError> {
    #[derive(Deserialize)]
    struct Peek {
        kind: Option<String>,
        missed: Option<u64>,
    }
    let line = line.trim();
    if line.is_empty() {
        return Ok(());
    }
    if let Ok(Peek {
        kind: Some(kind),
        missed: Some(n),
    }) = serde_json::from_str::<Peek>(line)
        && kind == "missed"
    {
        let _ = writeln!(
            err,
            "observer tail: fell behind the daemon, {n} records skipped"
        );
        return Ok(());
    }
    let written = match output {
        Format::Json => writeln!(out, "{line}"),
        Format::Text => match serde_json::from_str::<Record>(line) {
            Ok(r) => writeln!(out, "{}", Text(&r)),
            Err(_) => writeln!(out, "{line}"),
        },
    };
    written.map_err(TailError::Stdout)
}

/// The daemon's address, from `--server` (also `observer audit --server`).
pub(crate) struct Server {
    url: String,
    /// `Authorization: Bearer` value, when given.
    token: Option<String>,
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// A path prefix (a reverse proxy's), without the trailing slash.
    prefix: String,
}

impl Server {
    pub(crate) fn parse(url: &str) -> Result<Self, TailError> {
        let bad = |reason: &str| TailError::BadServer {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported: the daemon serves plain HTTP (use kubectl port-forward)",
                ));
            }
            _ => return Err(bad("expected http://HOST:PORT")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("expected http://HOST:PORT"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            url: url.to_owned(),
            token: None,
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    async fn get(
        &self,
        path_and_query: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, TailError> {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| self.timeout())?
            .map_err(|source| TailError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.http(source))?;
        // The connection task ends with the response body (or when the request fails).
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "observer tail: connection ended");
            }
        });
        let mut request = Request::get(format!("{}{path_and_query}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("observer-tail/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| TailError::BadServer {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| self.timeout())?
            .map_err(|source| self.http(source))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct ApiError {
            error: String,
        }
        let message = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        Err(TailError::Status {
            url: self.url.clone(),
            status,
            message,
        })
    }

    /// `GET path` as JSON; `None` when the daemon does not serve the path (404).
    pub(crate) async fn get_json(
        &self,
        path_and_query: &str,
    ) -> Result<Option<serde_json::Value>, TailError> {
        let resp = match self.get(path_and_query).await {
            Ok(resp) => resp,
            Err(TailError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| self.timeout())?
            .map_err(|source| self.http(source))?
            .to_bytes();
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|source| TailError::Decode {
                url: self.url.clone(),
                source,
            })
    }

    fn timeout(&self) -> TailError {
        TailError::Timeout {
            url: self.url.clone(),
            after: REQUEST_TIMEOUT,
        }
    }

    fn http(&self, source: hyper::Error) -> TailError {
        TailError::Http {
            url: self.url.clone(),
            source,
        }
    }
}

/// Percent-encodes a query value (an RFC 3339 offset's `+` must not turn into a space).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b',') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> TailArgs {
        let cli = Cli::try_parse_from(
            std::iter::once("observer")
                .chain(std::iter::once("tail"))
                .chain(args.iter().copied()),
        )
        .expect("parse");
        match cli.command {
            Command::Tail(a) => a,
            other => panic!("not tail: {other:?}"),
        }
    }

    #[test]
    fn follows_by_default_and_the_last_flag_wins() {
        assert!(parse(&[]).following());
        assert!(!parse(&["--no-follow"]).following());
        assert!(parse(&["--no-follow", "--follow"]).following());
        assert!(!parse(&["--follow", "--no-follow"]).following());
    }

    #[test]
    fn defaults() {
        let a = parse(&[]);
        assert_eq!(a.server, "http://127.0.0.1:9991");
        assert_eq!(a.token, None);
        assert_eq!(a.since, "5m");
        assert_eq!(a.output, Format::Text);
        assert_eq!(parse(&["-o", "json"]).output, Format::Json);
    }

    #[test]
    fn a_bad_since_is_refused_before_connecting() {
        let e = Cli::try_parse_from(["observer", "tail", "--since", "last tuesday"])
            .expect_err("bad since");
        assert!(e.to_string().contains("last tuesday"), "{e}");
    }

    #[test]
    fn server_urls() {
        let s = Server::parse("http://[::1]:9991/observer/").expect("url");
        assert_eq!((s.host.as_str(), s.port), ("::1", 9991));
        assert_eq!(s.prefix, "/observer");
        assert_eq!(Server::parse("http://node1").expect("url").port, 80);
        for bad in ["https://x:1", "127.0.0.1:9990", "http://"] {
            let e = Server::parse(bad).err().expect("bad url");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("2026-11-26T14:00:00+01:00"),
            "2026-11-26T14%3A00%3A00%2B01%3A00"
        );
        assert_eq!(percent_encode("blocked,lost_events"), "blocked,lost_events");
    }

    #[test]
    fn lines_print_as_text_json_or_notices() {
        let record = r#"{"schema":1,"time":"2026-11-26T14:02:03.123Z","kind":"blocked","node":"n1","protocol":"TCP","src":{"ip":"198.18.1.2","port":40000,"kind":"pod","namespace":"shop","pod":"a"},"dst":{"ip":"198.18.2.2","port":50051,"kind":"external"},"direction":null,"kernel_reason":null,"attempts":1,"policies":[]}"#;
        let mut out = Vec::new();
        let mut err = Vec::new();
        for line in [
            record,
            "",
            r#"{"kind":"missed","missed":7}"#,
            r#"{"kind":"future","x":1}"#,
        ] {
            print_line(Format::Text, line, &mut out, &mut err).expect("print");
        }
        let out = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            out,
            "2026-11-26T14:02:03.123Z blocked shop/a:40000 → 198.18.2.2:50051 attempts=1 node=n1\n{\"kind\":\"future\",\"x\":1}\n"
        );
        assert!(
            String::from_utf8(err)
                .expect("utf-8")
                .contains("7 records skipped")
        );
        let mut json = Vec::new();
        print_line(Format::Json, record, &mut json, &mut Vec::new()).expect("print");
        assert_eq!(
            String::from_utf8(json).expect("utf-8"),
            format!("{record}\n")
        );
    }
}
