//! The Kubernetes API server as a cluster source.
