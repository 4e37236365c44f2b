//! Builds `observer-fixtures-ebpf` (TC programs standing in for a CNI) for the BPF target through
//! aya-build; embedded as `observer_tests::FIXTURES_OBJECT`. Only the tests and benchmarks carry it: the
//! daemon's object is built by `observer/build.rs` from `observer-ebpf` alone.
use anyhow::Context as _;

/// The same pinned toolchain as `observer/build.rs` (a rustc on LLVM 22 for bpf-linker 0.13).
const EBPF_TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    // SAFETY: build scripts are single-threaded; the variable is inherited by aya-build's inner cargo only.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures-ebpf");
    let root_dir = root.to_str().context("non-UTF-8 path to fixtures-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-fixtures-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )?;
    // With AYA_BUILD_SKIP=1 there is no object: embed an empty one (loading it fails with a clear error).
    let object = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("fixtures");
    if !object.exists() {
        std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
