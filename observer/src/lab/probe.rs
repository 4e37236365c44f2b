//! Real gRPC peers inside pod namespaces: a tonic `grpc.health.v1` server on every declared TCP port, and
//! one health check with a deadline per probe.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::netns::{NetnsError, spawn_in};

/// A server or probe that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Entering the pod's namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The server could not start.
    #[error("gRPC server in {namespace} on port {port}: {message}")]
    Serve {
        /// Network namespace.
        namespace: String,
        /// Port.
        port: u16,
        /// What failed.
        message: String,
    },
}

/// gRPC health servers in one pod namespace, stopped on drop.
pub struct Servers {
    stop: Option<tokio::sync::watch::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), NetnsError>>>,
}

impl Servers {
    /// Serves `grpc.health.v1` (status SERVING) on `[::]:port` (both families) for each port in the
    /// namespace `netns`; returns once every socket listens.
    ///
    /// # Errors
    /// The namespace could not be entered, or a port could not be bound within 10 s.
    pub fn start(netns: &str, ports: Vec<u16>) -> Result<Self, ProbeError> {
        let addrs = ports
            .into_iter()
            .map(|port| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .collect();
        Self::bind(netns, addrs)
    }

    /// Serves `grpc.health.v1` (status SERVING) on each of `addrs` in the namespace `netns`; returns once
    /// every socket listens.
    ///
    /// # Errors
    /// The namespace could not be entered, or an address could not be bound within 10 s.
    pub fn bind(netns: &str, addrs: Vec<SocketAddr>) -> Result<Self, ProbeError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), (u16, String)>>();
        let thread = spawn_in(netns, move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err((0, format!("tokio runtime: {e}"))));
                    return;
                }
            };
            rt.block_on(async move {
                let (reporter, service) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                let mut tasks = Vec::new();
                for addr in addrs {
                    let listener = match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err((addr.port(), e.to_string())));
                            return;
                        }
                    };
                    let mut stop = stop_rx.clone();
                    let service = service.clone();
                    tasks.push(tokio::spawn(async move {
                        let _ = tonic::transport::Server::builder()
                            .add_service(service)
                            .serve_with_incoming_shutdown(
                                tokio_stream::wrappers::TcpListenerStream::new(listener),
                                async move {
                                    let _ = stop.changed().await;
                                },
                            )
                            .await;
                    }));
                }
                let _ = ready_tx.send(Ok(()));
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        let fail = |port: u16, message: String| ProbeError::Serve {
            namespace: netns.to_owned(),
            port,
            message,
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err((port, message))) => Err(fail(port, message)),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(fail(0, "did not start within 10 s".into())),
            },
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Dropping the sender wakes every server's shutdown future.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An error with its sources, `a: b: c` (tonic's own Display says only "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One `grpc.health.v1.Health/Check` from inside `netns` to `target`; `deadline` bounds connect and call.
/// `Ok` when the server answered SERVING, otherwise what went wrong.
pub fn check(netns: &str, target: SocketAddr, deadline: Duration) -> Result<(), String> {
    let handle = spawn_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(async move {
            let call = async {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(deadline)
                    .timeout(deadline)
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {}", chain(&e)))?;
                let resp = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                match resp.into_inner().status {
                    1 => Ok(()),
                    other => Err(format!("health status {other}")),
                }
            };
            // The deadline of the whole call, as a client's would be.
            tokio::time::timeout(deadline, call)
                .await
                .unwrap_or_else(|_| Err(format!("deadline of {deadline:?} exceeded")))
        })
    });
    match handle.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("probe thread panicked".into()),
    }
}
