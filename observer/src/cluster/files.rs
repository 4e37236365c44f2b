//! Manifest files as a cluster source.
