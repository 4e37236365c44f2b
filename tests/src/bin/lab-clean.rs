//! Removes lab namespaces left by crashed runs (those whose process is gone).
fn main() {
    observer_tests::require_root();
    observer_tests::clean_leftovers();
}
