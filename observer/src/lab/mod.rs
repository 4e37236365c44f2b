//! `observer lab`: manifests → a live cluster of network namespaces on this machine, NetworkPolicies
//! enforced by nftables, real gRPC probes, and a differential check against the policy engine.
//!
//! [`nft`] is the second implementation of the policy semantics (the kernel enforces it); the engine in
//! [`crate::policy`] is the first. Where they disagree on a probe, one of them is wrong.

pub mod nft;
