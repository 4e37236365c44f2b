//! The kernel side seen from user space: load once, attach to interfaces as they come and go, and turn
//! ring-buffer records into typed [`events::KernelEvent`]s.
//!
//! ```text
//!  loader::Datapath ── load(config) ──▶ programs + maps (observer-common ABI)
//!        │  attach(ifindex) / detach(ifindex)  ◀── links::follow (rtnetlink link events)
//!        │  recheck(): ours still first on every hook ◀── links::follow (every second)
//!        └─ events() ──▶ events::EventReader ── next_batch() ──▶ Vec<KernelEvent> ──▶ channel/
//! ```
//!
//! Kernel struct offsets and drop-reason names come from the running kernel's BTF ([`btf`], [`reasons`]).

pub mod btf;
pub mod cni;
pub mod events;
pub mod links;
pub mod loader;
pub mod reasons;
pub mod tc;

pub use events::{KernelEvent, Kind};
pub use loader::{AttachMode, Datapath, DatapathConfig, Hooks, LoadError};
