//! Real gRPC peers: a tonic server serving `grpc.health.v1` and a client call with a deadline.

use std::{net::SocketAddr, time::Duration};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::Netns;

/// A gRPC health server in a namespace, stopped on drop.
pub struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Server {
    /// Binds `addr` inside `ns` and serves until dropped. Returns once the socket listens.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
                let (reporter, service) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                let _ = ready_tx.send(());
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stop_rx.await;
                        },
                    )
                    .await
                    .expect("serving");
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("gRPC server ready");
        Self {
            stop: Some(stop_tx),
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `grpc.health.v1.Health/Check` call from inside `ns`, with `deadline` for connect and call.
pub fn call(ns: &Netns, target: SocketAddr, deadline: Duration) -> Result<(), String> {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(deadline)
                .timeout(deadline)
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
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
        })
    })
}
