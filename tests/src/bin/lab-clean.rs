//! Removes lab namespaces left by crashed runs (those whose process is gone): the test harness's and
//! `observer lab`'s.
fn main() {
    observer_tests::require_root();
    observer_tests::clean_leftovers();
    for name in observer::lab::netns::clean_leftovers() {
        println!("removed {name}");
    }
}
