//! `observer tail` end to end: the built binary against the HTTP API served in this process.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use observer::export::{
    ApiState, Metrics, Readiness, Recent, Record, Surface, http::serve, log::Text,
    record::RecordKind,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// The daemon's HTTP API on 127.0.0.1:0, on a runtime of its own thread.
struct Daemon {
    url: String,
    recent: Arc<Recent>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let recent = Arc::new(Recent::new(1000));
        let state = ApiState::new(
            Metrics::new().expect("metrics"),
            recent.clone(),
            Arc::new(Readiness::new()),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                serve(listener, state, Surface::Api { auth: None }, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        Self {
            url,
            recent,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocked record from `ago` before now (so that the default `--since 5m` covers it).
fn record(n: u16, ago: Duration) -> Record {
    let json = format!(
        r#"{{"schema": 1, "time": "2026-11-26T14:02:03.123Z", "kind": "blocked", "node": "n1", "interface": "veth12ab",
        "protocol": "TCP",
        "src": {{"ip": "198.18.1.2", "port": {port}, "kind": "pod", "namespace": "shop", "pod": "checkout-7d9f"}},
        "dst": {{"ip": "198.18.2.2", "port": 50051, "kind": "pod", "namespace": "payments", "pod": "payments-0"}},
        "cause": "policy", "direction": "ingress", "kernel_reason": "NETFILTER_DROP", "attempts": 4,
        "policies": [{{"namespace": "payments", "name": "default-deny", "direction": "ingress", "uid": "u1",
                      "resource_version": "81233", "nearest_miss": "no rules"}}]}}"#,
        port = 40000 + n
    );
    let mut r: Record = serde_json::from_str(&json).expect("record");
    r.time = SystemTime::now() - ago;
    // The wire carries milliseconds: round so that what comes back compares equal.
    let ms = r
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_millis();
    r.time = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("ms"));
    r
}

fn tail() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_observer"));
    c.arg("tail");
    for var in [
        "OBSERVER_SERVER",
        "OBSERVER_SINCE",
        "OBSERVER_KIND",
        "OBSERVER_OUTPUT",
        "OBSERVER_FOLLOW",
        "OBSERVER_NO_FOLLOW",
    ] {
        c.env_remove(var);
    }
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run observer tail")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for `cond` with a deadline, not a guess.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The child's stdout, line by line, through a channel (so that reads can have a deadline).
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn no_follow_prints_recent_records_as_the_logs_text_lines() {
    let daemon = Daemon::start();
    let records: Vec<Record> = (1..=3)
        .map(|n| record(n, Duration::from_secs(60)))
        .collect();
    // Older than the default `--since 5m`: not printed.
    daemon.recent.push(record(0, Duration::from_secs(3600)));
    for r in &records {
        daemon.recent.push(r.clone());
    }
    let o = run(tail().args(["--server", &daemon.url, "--no-follow"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let expected: String = records.iter().map(|r| format!("{}\n", Text(r))).collect();
    assert_eq!(text(&o.stdout), expected);
    assert!(
        text(&o.stdout).contains("shop/checkout-7d9f:40001 → payments/payments-0:50051 cause=policy direction=ingress policies=[payments/default-deny (ingress, rv 81233, nearest miss: no rules)] kernel=NETFILTER_DROP"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn no_follow_json_since_an_rfc3339_time_with_flags_from_the_environment() {
    let daemon = Daemon::start();
    let old = record(1, Duration::from_secs(7200));
    let new = record(2, Duration::from_secs(10));
    let mut lost = record(3, Duration::from_secs(5));
    lost.kind = RecordKind::LostEvents;
    for r in [&old, &new, &lost] {
        daemon.recent.push(r.clone());
    }
    let since =
        humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(3600)).to_string();
    let o = run(tail()
        .env("OBSERVER_SERVER", &daemon.url)
        .env("OBSERVER_NO_FOLLOW", "true")
        .env("OBSERVER_OUTPUT", "json")
        .env("OBSERVER_KIND", "blocked")
        .args(["--since", &since]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let got: Vec<Record> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect();
    assert_eq!(got, [new]);
}

#[test]
fn follow_replays_then_prints_records_as_they_arrive_until_the_daemon_stops() {
    let mut daemon = Daemon::start();
    let before = record(1, Duration::from_secs(30));
    daemon.recent.push(before.clone());
    let mut child = tail()
        .args(["--server", &daemon.url, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn observer tail");
    let lines = lines_of(&mut child);
    let next = || -> Record {
        let line = lines.recv_timeout(DEADLINE).expect("a line in time");
        serde_json::from_str(&line).expect("a JSON record")
    };
    assert_eq!(next(), before);
    // Connected (the replay came over the stream): what is pushed now arrives live.
    wait_for("the follower", || daemon.recent.followers() == 1);
    let after = record(2, Duration::ZERO);
    daemon.recent.push(after.clone());
    assert_eq!(next(), after);

    // The daemon going away ends `tail` with an error that says so.
    daemon.stop();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("observer tail kept running after the daemon stopped");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stderr = child.wait_with_output().expect("output").stderr;
    assert_eq!(status.code(), Some(1));
    assert!(
        text(&stderr).contains(&format!(
            "the observer daemon at {} closed the stream",
            daemon.url
        )),
        "{}",
        text(&stderr)
    );
}

#[test]
fn follow_in_text_until_killed() {
    let daemon = Daemon::start();
    let mut child = tail()
        .args(["--server", &daemon.url, "--since", "1m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn observer tail");
    let lines = lines_of(&mut child);
    wait_for("the follower", || daemon.recent.followers() == 1);
    let r = record(7, Duration::ZERO);
    daemon.recent.push(r.clone());
    let line = lines.recv_timeout(DEADLINE).expect("a line in time");
    assert_eq!(line, Text(&r).to_string());
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn an_unreachable_daemon_is_an_error_naming_the_url() {
    // A port that was just free: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for follow in ["--follow", "--no-follow"] {
        let o = run(tail().args(["--server", &url, follow]));
        assert_eq!(o.status.code(), Some(1), "{follow}");
        assert!(o.stdout.is_empty());
        let err = text(&o.stderr);
        assert!(
            err.starts_with(&format!(
                "observer tail: cannot connect to the observer daemon at {url}: "
            )),
            "{err}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_before_connecting() {
    let o = run(tail().args(["--server", "http://127.0.0.1:1", "--since", "last tuesday"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("last tuesday"),
        "{}",
        text(&o.stderr)
    );
    let o = run(tail().args(["--server", "https://observer:9990", "--no-follow"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("--server https://observer:9990: https is not supported"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_daemon_error_is_shown_with_its_message() {
    let daemon = Daemon::start();
    let o = run(tail().args(["--server", &daemon.url, "--no-follow", "--kind", "nope"]));
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("the observer daemon at {} answered 400 Bad Request: kind: unknown record kind \"nope\"", daemon.url)),
        "{err}"
    );
}
