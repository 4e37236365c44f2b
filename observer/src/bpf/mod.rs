//! The kernel side seen from user space: load once, attach to interfaces as they come and go, and turn
//! ring-buffer records into typed [`events::KernelEvent`]s.
//!
//! ```text
//!  loader::Datapath ── load(config) ──▶ programs + maps (observer-common ABI)
//!        │  attach(ifindex) / detach(ifindex)  ◀── links::follow (rtnetlink link events)
//!        └─ events() ──▶ events::EventReader ── next_batch() ──▶ Vec<KernelEvent> ──▶ channel/
//! ```
//!
//! Kernel struct offsets and drop-reason names come from the running kernel's BTF ([`btf`], [`reasons`]).

pub mod btf;
pub mod events;
pub mod links;
pub mod loader;
pub mod reasons;

pub use events::{KernelEvent, Kind};
pub use loader::{AttachMode, Datapath, DatapathConfig, LoadError};

/// Test fixtures for the privileged tests; not used by the daemon.
#[doc(hidden)]
pub mod testing {
    /// A TC program (`test_drop`) that drops IPv4 TCP packets to port 50051.
    pub static DROP_OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test-drop"));
}
