//! Builds `observer-ebpf` for the BPF target through aya-build; the object is embedded by `bpf::loader`.
use anyhow::Context as _;

/// The eBPF side needs a rustc on LLVM 22 (bpf-linker 0.13 is built against it): the same pinned toolchain
/// as the workspace, with unstable `-Z build-std` allowed for this inner build only.
const EBPF_TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    // SAFETY: build scripts are single-threaded; the variable is inherited by aya-build's inner cargo only.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let metadata = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("observer-ebpf");
    let root_dir = metadata
        .to_str()
        .context("non-UTF-8 path to observer-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )?;
    // With AYA_BUILD_SKIP=1 (pure user-space work: policy engine, docs) there is no object: embed an empty
    // one, which the loader refuses at run time with a clear error.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let object = out.join("observer");
    if !object.exists() {
        std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
