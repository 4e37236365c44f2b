//! observer: which NetworkPolicy blocked this gRPC channel?
//!
//! Data flows one way: `kernel event → channel → verdict → attribution → export`.
//!
//! | module | holds |
//! |---|---|
//! | [`bpf`] | loading and attaching the kernel programs, following interfaces, decoding events |

pub mod cluster;
