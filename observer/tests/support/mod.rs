#[expect(
    dead_code,
    reason = "each test binary uses its part of the fake: list/watch (cluster_kube) or the reviews (api_auth)"
)]
pub mod fake_apiserver;
