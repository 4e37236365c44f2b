//! Policy usage at scale: the memory the usage table takes per hit policy and per hit rule (10,000 policies
//! hit, with 0, 1 and 8 rules each), the cost of counting one channel, and of building the full
//! `/api/v1/policies/usage` report against an engine of 10,000 policies. Memory is measured with a counting
//! global allocator; the policy names are the inventory's shared strings, so only the table is counted.
//!
//! `cargo bench -p observer --bench usage`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer::policy::{self, Direction, PolicyKind};
use observer::usage::{Hit, PolicyKey, Usage};

const POLICIES: usize = 10_000;
const CHANNELS: usize = 1_000_000;
/// Targets: the table must stay small next to the inventory (~650 B per pod).
const TARGET_PER_POLICY: f64 = 256.0;
const TARGET_PER_RULE: f64 = 64.0;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            CURRENT.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

fn keys() -> Vec<PolicyKey> {
    (0..POLICIES)
        .map(|i| PolicyKey {
            kind: PolicyKind::NetworkPolicy,
            namespace: Arc::from(format!("ns{}", i / 2)),
            name: Arc::from(format!("policy-{i}")),
        })
        .collect()
}

/// Live bytes of a table with every policy of `keys` hit once on each of `rules` rules (or on none).
fn table_bytes(keys: &[PolicyKey], rules: usize) -> usize {
    let before = live();
    let mut usage = Usage::new(SystemTime::now());
    let now = SystemTime::now();
    for key in keys {
        let hits: Vec<Hit> = if rules == 0 {
            vec![Hit {
                policy: key.clone(),
                direction: Direction::Ingress,
                rule: None,
            }]
        } else {
            (0..rules)
                .map(|r| Hit {
                    policy: key.clone(),
                    direction: Direction::Ingress,
                    rule: Some(r),
                })
                .collect()
        };
        usage.allowed(&hits, now);
    }
    let bytes = live() - before;
    black_box(&usage);
    bytes
}

fn main() {
    let keys = keys();
    let per = |rules: usize| table_bytes(&keys, rules) as f64 / POLICIES as f64;
    let (r0, r1, r8) = (per(0), per(1), per(8));
    let per_rule = (r8 - r1) / 7.0;
    println!("usage table, {POLICIES} policies hit:");
    println!(
        "  bytes per hit policy (no rule hit): {r0:.0} B (target ≤ {TARGET_PER_POLICY:.0} B, ratio {:.2})",
        r0 / TARGET_PER_POLICY
    );
    println!("  bytes per hit policy with 1 rule hit: {r1:.0} B");
    println!("  bytes per hit policy with 8 rules hit: {r8:.0} B");
    println!(
        "  bytes per further hit rule: {per_rule:.0} B (target ≤ {TARGET_PER_RULE:.0} B, ratio {:.2})",
        per_rule / TARGET_PER_RULE
    );
    println!("  policies never hit: 0 B (listed from the engine when the report is built)");

    // Counting a channel: a lookup and two counters.
    let mut usage = Usage::new(SystemTime::now());
    let now = SystemTime::now();
    let start = Instant::now();
    for i in 0..CHANNELS {
        let hit = Hit {
            policy: keys[i % POLICIES].clone(),
            direction: Direction::Ingress,
            rule: Some(i % 3),
        };
        usage.allowed(std::slice::from_ref(&hit), now);
    }
    let ns = start.elapsed().as_nanos() as f64 / CHANNELS as f64;
    println!("  counting one channel: {ns:.0} ns (once per channel, at establishment or block)");

    // The full report against an engine of POLICIES policies, half of them hit.
    let mut engine = policy::Index::new();
    for i in 0..POLICIES {
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("policy-{i}"), "namespace": format!("ns{}", i / 2)},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 50051}]}, {"ports": [{"port": 8080}]}]}
        }))
        .expect("policy");
        engine.apply_policy(policy::Policy::compile(&np).expect("valid"));
    }
    let start = Instant::now();
    let report = usage.report(&engine, "node-a");
    let json = serde_json::to_vec(&report).expect("json");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "  GET /api/v1/policies/usage for {POLICIES} policies: {ms:.1} ms, {} KB of JSON",
        json.len() / 1024
    );
}
