//! Rebuild when bpf-linker changes: the crate has an undeclared dependency on that binary.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo::rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo::warning=bpf-linker not found ({err}): run ./x setup"),
    }
}
