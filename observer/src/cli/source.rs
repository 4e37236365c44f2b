//! Where the one-shot commands (`explain`, `audit`) get the cluster: manifest files with `--cluster`, or
//! else the live cluster, listed once (kubeconfig or in-cluster, like kubectl).

use std::io::Write;
use std::path::PathBuf;

use crate::audit::Source;
use crate::manifest::Manifests;

/// The loaded cluster and what it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The usable objects (problems already printed).
    pub manifests: Manifests,
    /// What was loaded.
    pub source: Source,
    /// What could not be loaded, said plainly (kinds a live cluster does not have).
    pub notes: Vec<String>,
}

/// Loads `paths`, or lists the live cluster when there are none, printing skipped kinds and problems to
/// `err`; `what` completes "… problem(s) above; WHAT without those objects". `Ok(None)`: nothing usable
/// (the reason was printed; exit 2).
///
/// # Errors
/// Only those of `err`.
pub fn load(what: &str, paths: &[PathBuf], err: &mut dyn Write) -> std::io::Result<Option<Loaded>> {
    let (manifests, source, notes) = if paths.is_empty() {
        let listed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| std::io::Error::other(format!("starting the tokio runtime: {e}")))
            .map(|rt| rt.block_on(crate::cluster::snapshot::list_default()));
        match listed {
            Ok(Ok(s)) => (
                s.manifests,
                Source::Cluster {
                    server: s.server.clone(),
                },
                s.notes,
            ),
            Ok(Err(e)) => {
                writeln!(
                    err,
                    "error: {e} (give manifests with --cluster PATH to work offline)"
                )?;
                return Ok(None);
            }
            Err(e) => {
                writeln!(err, "error: {e}")?;
                return Ok(None);
            }
        }
    } else {
        (
            Manifests::load(paths),
            Source::Manifests {
                paths: paths.iter().map(|p| p.display().to_string()).collect(),
            },
            Vec::new(),
        )
    };
    for s in &manifests.skipped {
        writeln!(err, "{s}")?;
    }
    for e in &manifests.errors {
        writeln!(err, "error: {e}")?;
    }
    if manifests.object_count() == 0 {
        let from = match &source {
            Source::Manifests { paths } => format!("{paths:?}"),
            Source::Cluster { server } => server.clone(),
        };
        writeln!(
            err,
            "error: no usable Namespace, Pod, Node or NetworkPolicy in {from}"
        )?;
        return Ok(None);
    }
    if !manifests.errors.is_empty() {
        writeln!(
            err,
            "warning: {} problem(s) above; {what} without those objects",
            manifests.errors.len()
        )?;
    }
    Ok(Some(Loaded {
        manifests,
        source,
        notes,
    }))
}
