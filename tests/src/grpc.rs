//! Real gRPC peers, the lab's ([`observer::lab::probe`]): a tonic server serving `grpc.health.v1` and a
//! client call with a deadline.

use std::{net::SocketAddr, time::Duration};

use observer::lab::probe;

use crate::Netns;

/// A gRPC health server in a namespace, stopped on drop.
pub struct Server {
    _servers: probe::Servers,
    pub addr: SocketAddr,
}

impl Server {
    /// Binds `addr` inside `ns` and serves until dropped. Returns once the socket listens.
    #[track_caller]
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let servers = probe::Servers::bind(&ns.name, vec![addr])
            .unwrap_or_else(|e| panic!("gRPC server on {addr}: {e}"));
        Self {
            _servers: servers,
            addr,
        }
    }
}

/// One `grpc.health.v1.Health/Check` call from inside `ns`; `deadline` bounds connect and call.
pub fn call(ns: &Netns, target: SocketAddr, deadline: Duration) -> Result<(), String> {
    probe::check(&ns.name, target, deadline)
}
