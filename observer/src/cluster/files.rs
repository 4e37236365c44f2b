//! Manifest files as a cluster source: the given files and directories are loaded with the
//! [manifest loader](crate::manifest), watched, and reloaded (debounced) when they change.
//!
//! A reload is all or nothing: if any object of any file is unusable, the inventory keeps the last good
//! state and the problem is counted and kept for logs. Half an edit (an editor's intermediate save, a
//! `kubectl get` redirected mid-write) must not make policies vanish.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};

use super::{SharedInventory, SourceStats};
use crate::manifest::{ManifestError, Manifests};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the manifest source could not watch or load.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path could not be watched for changes.
    #[error("watching {path} for changes")]
    Watch {
        /// The path.
        path: PathBuf,
        /// What notify reported.
        #[source]
        source: notify::Error,
    },
    /// The manifests had problems; the last good state is kept.
    #[error("{} problem(s) in the manifests, keeping the last good state; first: {}", errors.len(), first(errors))]
    Load {
        /// Every problem, each naming file, object and field.
        errors: Vec<ManifestError>,
    },
    /// Objects the manifests hold that the inventory cannot take; the last good state is kept.
    #[error("{} object(s) not usable by the inventory, keeping the last good state; first: {}", errors.len(), first(errors))]
    Rejected {
        /// Every problem, each naming the object.
        errors: Vec<super::Error>,
    },
}

fn first<E: ToString>(errors: &[E]) -> String {
    errors.first().map(ToString::to_string).unwrap_or_default()
}

/// Quiet time after the last change before reloading: editors and `kubectl` write in several steps.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(250);

/// Loads manifests into a [`SharedInventory`] and reloads them when they change.
#[derive(Clone, Debug)]
pub struct FileSource {
    paths: Vec<PathBuf>,
    inventory: SharedInventory,
    stats: Arc<SourceStats>,
    debounce: Duration,
}

impl FileSource {
    /// A source for `paths` (files or directories, as `observer run --cluster PATH...`).
    pub fn new(paths: impl IntoIterator<Item = PathBuf>, inventory: SharedInventory) -> Self {
        Self {
            paths: paths.into_iter().collect(),
            inventory,
            stats: Arc::default(),
            debounce: DEFAULT_DEBOUNCE,
        }
    }

    /// Changes the quiet time before a reload.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Failed reloads (`errors`), reloads (`relists`) and the last problem's text.
    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    /// The inventory this source writes.
    pub fn inventory(&self) -> &SharedInventory {
        &self.inventory
    }

    /// Loads every path now and, if all of it is usable, replaces the inventory's content with it.
    pub fn reload(&self) -> Result<()> {
        let manifests = Manifests::load(&self.paths);
        self.stats.record_relist();
        for skipped in &manifests.skipped {
            tracing::debug!(%skipped, "manifest object not used");
        }
        if !manifests.errors.is_empty() {
            let error = Error::Load {
                errors: manifests.errors,
            };
            tracing::warn!(error = %error, "manifests not reloaded");
            self.stats.record_error(&error);
            return Err(error);
        }
        let mut inventory = self.inventory.write();
        let replaced = inventory.replace(&manifests.objects(), SystemTime::now());
        if let Err(errors) = replaced {
            drop(inventory);
            let error = Error::Rejected { errors };
            tracing::warn!(error = %error, "manifests not reloaded");
            self.stats.record_error(&error);
            return Err(error);
        }
        tracing::info!(counts = ?inventory.counts(), "manifests loaded");
        self.stats.clear_error();
        Ok(())
    }

    /// Loads, then reloads on every change until the future is dropped. Load problems are logged, counted
    /// and survived; only failing to watch the paths at all is an error.
    pub async fn run(self) -> Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watched: Vec<PathBuf> = self.paths.iter().map(|p| absolute(p)).collect();
        let relevant = watched.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let touches = match &event {
                    // Reading the files (ours included) is not a change: only writes, creations,
                    // renames and removals are.
                    Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => false,
                    Ok(event) => event
                        .paths
                        .iter()
                        .any(|p| relevant.iter().any(|w| p.starts_with(w))),
                    // Rescan on watcher trouble rather than miss a change.
                    Err(_) => true,
                };
                if touches {
                    // The receiver is gone only when the source stopped.
                    let _ = tx.send(());
                }
            })
            .map_err(|source| Error::Watch {
                path: PathBuf::new(),
                source,
            })?;
        for path in &watched {
            // Editors replace files by renaming over them: watch a file's directory, not the file.
            let (target, mode) = if path.is_dir() {
                (path.clone(), RecursiveMode::Recursive)
            } else {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (parent, RecursiveMode::NonRecursive)
            };
            watcher
                .watch(&target, mode)
                .map_err(|source| Error::Watch {
                    path: target.clone(),
                    source,
                })?;
        }
        // Problems are in the stats and the log; the source goes on.
        let _ = self.reload();
        while rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(self.debounce, rx.recv()).await {}
            let _ = self.reload();
        }
        Ok(())
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
