//! Removes lab namespaces left by crashed runs (those whose process is gone or a zombie): the test
//! harness's and `observer lab`'s.
fn main() {
    observer_tests::require_root();
    let tests = observer_tests::clean_leftovers();
    let lab = observer::lab::netns::clean_leftovers(observer::lab::netns::PREFIX);
    for name in tests.iter().chain(&lab) {
        println!("removed {name}");
    }
}
