//! observer: which NetworkPolicy blocked this gRPC channel?
//!
//! Data flows one way: `kernel event → channel → verdict → attribution → export` (the picture, the layout
//! and who writes what: `docs/ARCHITECTURE.md`; what users rely on — records, explain JSON, HTTP API,
//! metrics, CLI: `docs/CONTRACT.md`).
//!
//! | module | holds |
//! |---|---|
//! | [`bpf`] | loading and attaching the kernel programs, following interfaces, decoding events |
//! | [`channel`] | connection attempts from kernel events: established or blocked, with the evidence |
//! | [`cluster`] | the inventory: IP → pod/node at time T, namespaces, policies and their revisions |
//! | [`policy`] | the pure NetworkPolicy engine: compile, index, evaluate, explain |
//! | [`manifest`] | loading Namespaces, Pods, Nodes and NetworkPolicies from YAML/JSON files |
//! | [`audit`] | `observer audit`: the policy mistakes that break gRPC channels, as findings |
//! | [`attribution`] | blocked channel + inventory + verdict → forensics record (cause, direction, policies) |
//! | [`pipeline`] | the daemon's core, one direction: events → channels → attribution → records + metrics |
//! | [`export`] | Prometheus metrics, the JSON forensics log, the HTTP API, Kubernetes Events |
//! | [`usage`] | per-policy and per-rule usage: channels allowed and denied, last hits |
//! | [`cli`] | the command line: one module per subcommand |
//! | `lab` | `observer lab` and the privileged tests' harness (cargo feature `lab`, on by default; the DaemonSet's image is built without it) |

pub mod attribution;
pub mod audit;
pub mod bpf;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod conntrack;
pub mod export;
#[cfg(feature = "lab")]
pub mod lab;
pub mod manifest;
pub mod pipeline;
pub mod policy;
pub mod usage;
pub mod whatif;
