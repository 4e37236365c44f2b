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

/// Fixtures for the privileged tests and benchmarks; never loaded by the daemon.
#[doc(hidden)]
pub mod testing {
    /// TC programs `test_drop` (drops IPv4 TCP to port 50051) and `test_pass` (does nothing).
    pub static FIXTURES_OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fixtures"));
}
