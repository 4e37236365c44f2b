//! The report of a lab run: each probe's kernel outcome (with the drop the observer saw), the engine's
//! verdict, the differential check between the two, and the plumbing check of the observer's records;
//! as JSON or as text (a matrix per port).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::addr::Mapping;
use super::plan::{LabPod, Plan, ProbeSpec, Target};
use super::{nft, observe};
use crate::policy::{Index, Protocol, ResolvedEnd};

/// The kernel's answer to a probe.
#[derive(Debug, Clone, Serialize)]
pub struct KernelOutcome {
    /// The health check succeeded.
    pub allowed: bool,
    /// The kernel refused it: the check failed and, with the observer attached, a policy drop of the
    /// probe was seen ([`POLICY_DROP_REASON`] from the lab's nftables, or the reject of a Service without
    /// backends). A failure without that evidence (a server that did not answer, a lost packet) is
    /// neither allowed nor denied, and is a disagreement. Without the observer, any failure counts.
    pub denied: bool,
    /// The kernel's drop reason for the probe, from the observer's record (`kfree_skb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl KernelOutcome {
    /// `allowed`, `denied`, or `failed` (no policy drop seen).
    #[must_use]
    pub fn word(&self) -> &'static str {
        if self.allowed {
            "allowed"
        } else if self.denied {
            "denied"
        } else {
            "failed"
        }
    }
}

/// The engine's answer to a probe.
#[derive(Debug, Clone, Serialize)]
pub struct EngineOutcome {
    /// Both directions allow it (through a Service: for every backend).
    pub allowed: bool,
    /// Policies denying egress at the source.
    pub egress_denied_by: Vec<String>,
    /// Policies denying ingress at the destination.
    pub ingress_denied_by: Vec<String>,
    /// Through a Service: the verdict for each backend (the kernel picks one at random).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendOutcome>,
}

/// The engine's verdict for one backend of a Service probe.
#[derive(Debug, Clone, Serialize)]
pub struct BackendOutcome {
    /// `namespace/pod`.
    pub backend: String,
    /// Backend ip:targetPort.
    pub addr: SocketAddr,
    /// Allowed.
    pub allowed: bool,
    /// Egress ∪ ingress `denied_by`, sorted.
    pub denied_by: Vec<String>,
}

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// `namespace/pod`.
    pub from: String,
    /// `namespace/pod`, or `svc/namespace/name` for a probe through a Service.
    pub to: String,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Always TCP (gRPC).
    pub protocol: Protocol,
    /// Through the kernel.
    pub kernel: KernelOutcome,
    /// By the policy engine.
    pub engine: EngineOutcome,
    /// The attached observer's record for a blocked probe (null when allowed or not observed).
    pub attribution: Option<observe::Attribution>,
    /// The differential check: the kernel (policies compiled to nftables, an implementation independent
    /// of the engine) and the engine agree — allowed both, or denied both with a policy drop seen.
    pub agree: bool,
    /// What disagrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
    /// The plumbing check failed: the observer's record of a blocked probe does not name exactly what the
    /// same engine's `denied_by` says (egress ∪ ingress), or is missing or duplicated. Both sides run the
    /// one engine, so this checks capture → channel → attribution → record, not the policy semantics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plumbing_failure: Option<String>,
}

/// Pod as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PodReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Lab addresses.
    pub ips: Vec<IpAddr>,
    /// Served TCP ports.
    pub ports: Vec<u16>,
    /// Its network namespace.
    pub netns: String,
}

/// What `observer lab -o json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node namespace (single node).
    pub node_netns: String,
    /// Pods.
    pub pods: Vec<PodReport>,
    /// Addresses the lab changed.
    pub mapping: Vec<Mapping>,
    /// Things to know.
    pub warnings: Vec<String>,
    /// `observer run` was attached — its programs seen on every pod interface of the node before any
    /// probe — and its records give the kernel's drop reasons and the plumbing check.
    pub observer_attached: bool,
    /// The pod interfaces where the observer's programs were seen (ingress and egress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached_interfaces: Vec<String>,
    /// Every probe.
    pub probes: Vec<ProbeResult>,
    /// Number of probes where kernel and engine disagree (the differential check).
    pub disagreements: usize,
    /// Number of probes failing the plumbing check (observer records vs the engine).
    pub plumbing_failures: usize,
}

impl Report {
    /// Every check passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.disagreements == 0 && self.plumbing_failures == 0
    }
}
/// The engine's verdict for one probe, next to what the kernel did. With `drops_seen` (the observer
/// attached), a failure is not a denial until [`collect_records`] finds the policy drop.
#[must_use]
pub fn judge(
    plan: &Plan,
    index: &Index,
    s: ProbeSpec,
    kernel: Result<(), String>,
    drops_seen: bool,
) -> ProbeResult {
    let src = &plan.pods[s.src];
    let endpoint = |p: &LabPod, ip: IpAddr| match index.pod_endpoint(&p.pod.namespace, &p.pod.name)
    {
        Some(ResolvedEnd::Pod { id, .. }) => ResolvedEnd::Pod { id, ip: Some(ip) },
        _ => ResolvedEnd::External { ip },
    };
    let verdict = |dst: ResolvedEnd, port: u16| match index.evaluate(
        endpoint(src, s.src_ip),
        dst,
        port,
        Protocol::Tcp,
    ) {
        Ok(v) => EngineOutcome {
            allowed: v.allowed,
            egress_denied_by: v.egress.denied_by.clone(),
            ingress_denied_by: v.ingress.denied_by.clone(),
            backends: Vec::new(),
        },
        Err(e) => EngineOutcome {
            allowed: false,
            egress_denied_by: vec![format!("(engine error: {e})")],
            ingress_denied_by: Vec::new(),
            backends: Vec::new(),
        },
    };
    let kernel = KernelOutcome {
        allowed: kernel.is_ok(),
        denied: !drops_seen && kernel.is_err(),
        drop_reason: None,
        error: kernel.err(),
    };
    let (to, engine) = match s.dst {
        Target::Pod(d) => {
            let dst = &plan.pods[d];
            (dst.key(), verdict(endpoint(dst, s.dst_ip), s.port))
        }
        Target::Service(dial) => {
            let svc = &plan.services[dial.service];
            let port = &svc.ports[dial.port];
            let backends: Vec<BackendOutcome> = port
                .backends
                .iter()
                .filter(|b| b.addr.is_ipv4() == s.dst_ip.is_ipv4())
                .map(|b| {
                    let dst = match b.pod.and_then(|i| plan.pods.get(i)) {
                        Some(p) => endpoint(p, b.addr.ip()),
                        None => index.lookup_ip(b.addr.ip()),
                    };
                    let v = verdict(dst, b.addr.port());
                    let mut denied_by: Vec<String> = v
                        .egress_denied_by
                        .into_iter()
                        .chain(v.ingress_denied_by)
                        .collect();
                    denied_by.sort();
                    denied_by.dedup();
                    BackendOutcome {
                        backend: b.name.clone(),
                        addr: b.addr,
                        allowed: v.allowed,
                        denied_by,
                    }
                })
                .collect();
            let allowed = !backends.is_empty() && backends.iter().all(|b| b.allowed);
            let first_denied = backends.iter().find(|b| !b.allowed);
            let engine = EngineOutcome {
                allowed,
                egress_denied_by: Vec::new(),
                ingress_denied_by: first_denied
                    .map(|b| b.denied_by.clone())
                    .unwrap_or_default(),
                backends,
            };
            (svc.key(), engine)
        }
    };
    ProbeResult {
        from: src.key(),
        to,
        src_ip: s.src_ip,
        dst_ip: s.dst_ip,
        port: s.port,
        protocol: Protocol::Tcp,
        agree: false,
        disagreement: None,
        plumbing_failure: None,
        kernel,
        engine,
        attribution: None,
    }
}

/// The differential check of one probe, once the kernel's evidence is in: allowed by both, or denied
/// by both with the kernel's drop seen. Through a Service whose backends disagree, either kernel
/// outcome is consistent (DNAT picks a backend at random), but a failure without a drop is not.
pub fn compare(p: &mut ProbeResult) {
    let mixed = !p.engine.allowed && p.engine.backends.iter().any(|b| b.allowed);
    p.agree = if p.engine.allowed {
        p.kernel.allowed
    } else if mixed {
        p.kernel.allowed || p.kernel.denied
    } else {
        p.kernel.denied
    };
    p.disagreement = (!p.agree).then(|| {
        let kernel = if !p.kernel.allowed && !p.kernel.denied {
            "failed without a policy drop seen".to_owned()
        } else {
            p.kernel.word().to_owned()
        };
        format!(
            "kernel {kernel}, engine {}",
            if p.engine.allowed {
                "allowed"
            } else {
                "denied"
            }
        )
    });
}

/// The kernel's drop reason for a policy drop (`kfree_skb`'s `SKB_DROP_REASON_NETFILTER_DROP`): the lab's
/// nftables drops every packet a policy denies.
pub const POLICY_DROP_REASON: &str = "NETFILTER_DROP";

/// Waits for the observer's records of the failed probes, and takes from each the kernel's evidence:
/// the probe is denied when its drop was a policy drop (or, through a Service without backends, the
/// record says `no_endpoints`: the Service's reject).
pub fn collect_records(o: &observe::Observer, probes: &mut [ProbeResult]) {
    let key = |p: &ProbeResult| (p.src_ip, p.dst_ip, p.port);
    // A record is written once a SYN has gone unanswered for the blocked window.
    let end = std::time::Instant::now() + observe::BLOCKED_WINDOW + Duration::from_secs(4);
    let mut blocked = o.blocked();
    while std::time::Instant::now() < end
        && probes
            .iter()
            .any(|p| !p.kernel.allowed && !blocked.contains_key(&key(p)))
    {
        std::thread::sleep(Duration::from_millis(200));
        blocked = o.blocked();
    }
    for p in probes.iter_mut().filter(|p| !p.kernel.allowed) {
        let a = blocked.get(&key(p)).cloned();
        p.kernel.drop_reason = a.as_ref().and_then(|a| a.kernel_reason.clone());
        let rejected_without_backends = p.to.starts_with("svc/")
            && p.engine.backends.is_empty()
            && a.as_ref().is_some_and(|a| a.cause == "no_endpoints");
        p.kernel.denied = p.kernel.drop_reason.as_deref() == Some(POLICY_DROP_REASON)
            || rejected_without_backends;
        p.attribution = a;
    }
}

/// The plumbing check of every failed probe: the observer's record names exactly the engine's
/// `denied_by` (through a Service: the backend's, or `no_endpoints`), once per connection attempt.
/// The observer runs the same engine, so a failure here is in capture, channel tracking, attribution or
/// export — never a disagreement about what the policies say (that is [`compare`]'s job).
pub fn check_plumbing(probes: &mut [ProbeResult]) {
    for p in probes.iter_mut().filter(|p| !p.kernel.allowed) {
        let a = p.attribution.as_ref();
        let problem = if p.to.starts_with("svc/") {
            // Through a Service: the record names the backend; the engine's denied_by for that backend,
            // or no_endpoints for a Service without backends.
            let backend = a.and_then(|a| p.engine.backends.iter().find(|b| Some(b.addr) == a.dst));
            let expected = backend.map(|b| b.denied_by.clone()).unwrap_or_default();
            match a {
                None => Some("the observer reported no blocked channel".to_owned()),
                Some(a) if !a.service.contains(&p.to) => Some(format!(
                    "the observer names Service(s) [{}], not {}",
                    a.service.join(", "),
                    p.to
                )),
                Some(a) if p.engine.backends.is_empty() && a.cause != "no_endpoints" => {
                    Some(format!(
                        "the Service has no backend; the observer says cause {}",
                        a.cause
                    ))
                }
                Some(a) if !p.engine.backends.is_empty() && backend.is_none() => Some(format!(
                    "the observer names backend {:?}, not one of the Service's",
                    a.dst
                )),
                Some(a) if a.policies != expected => Some(format!(
                    "the observer names [{}], the engine denied_by [{}] for that backend",
                    a.policies.join(", "),
                    expected.join(", ")
                )),
                Some(_) => None,
            }
        } else {
            let mut expected: Vec<String> = p
                .engine
                .egress_denied_by
                .iter()
                .chain(&p.engine.ingress_denied_by)
                .cloned()
                .collect();
            expected.sort();
            expected.dedup();
            match a {
                None => Some("the observer reported no blocked channel".to_owned()),
                Some(a) if a.policies != expected => Some(format!(
                    "the observer names [{}], the engine denied_by [{}]",
                    a.policies.join(", "),
                    expected.join(", ")
                )),
                Some(_) => None,
            }
        };
        p.plumbing_failure = problem.or_else(|| duplicates(a));
    }
}

/// One connection attempt, one record.
fn duplicates(a: Option<&observe::Attribution>) -> Option<String> {
    a.filter(|a| a.records > 1).map(|a| {
        format!(
            "the observer wrote {} records for one connection attempt",
            a.records
        )
    })
}

/// The text report: a matrix per port, the engine's verdict per probe, and the differential check.
#[must_use]
pub fn render_text(report: &Report, colour: bool) -> String {
    use std::fmt::Write as _;
    let paint = |s: &str, allowed: bool| -> String {
        if colour {
            let c = if allowed { "32" } else { "31" };
            format!("\x1b[{c}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lab: {} pods on one node (network namespace {}), policies enforced by nftables table inet {}",
        report.pods.len(),
        report.node_netns,
        nft::TABLE
    );
    for p in &report.pods {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        let ports: Vec<String> = p.ports.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            o,
            "  {}/{}  {}  ports {}",
            p.namespace,
            p.name,
            ips.join(", "),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(", ")
            }
        );
    }
    let ports: BTreeSet<u16> = report.probes.iter().map(|p| p.port).collect();
    for port in ports {
        let here: Vec<&ProbeResult> = report.probes.iter().filter(|p| p.port == port).collect();
        let mut srcs: Vec<&str> = here.iter().map(|p| p.from.as_str()).collect();
        let mut dsts: Vec<&str> = here.iter().map(|p| p.to.as_str()).collect();
        srcs.sort_unstable();
        srcs.dedup();
        dsts.sort_unstable();
        dsts.dedup();
        let w0 = srcs.iter().map(|s| s.len()).max().unwrap_or(0).max(8);
        let _ = writeln!(
            o,
            "\nTCP {port}: kernel (from ↓ to →; ! = the engine disagrees)"
        );
        let _ = write!(o, "  {:w0$}", "");
        for d in &dsts {
            let _ = write!(o, "  {d:<w$}", w = d.len().max(8));
        }
        o.push('\n');
        for s in &srcs {
            let _ = write!(o, "  {s:w0$}");
            for d in &dsts {
                let w = d.len().max(8);
                let cell = here.iter().find(|p| p.from == *s && p.to == *d);
                let _ = match cell {
                    Some(p) => {
                        let word = format!("{}{}", p.kernel.word(), if p.agree { "" } else { "!" });
                        write!(
                            o,
                            "  {}{}",
                            paint(&word, p.kernel.allowed),
                            " ".repeat(w.saturating_sub(word.len()))
                        )
                    }
                    None => write!(o, "  {:w$}", "-"),
                };
            }
            o.push('\n');
        }
    }
    let _ = writeln!(o, "\nengine verdicts:");
    for p in &report.probes {
        let mut why = Vec::new();
        if !p.engine.egress_denied_by.is_empty() {
            why.push(format!(
                "egress denied by {}",
                p.engine.egress_denied_by.join(", ")
            ));
        }
        if !p.engine.ingress_denied_by.is_empty() {
            why.push(format!(
                "ingress denied by {}",
                p.engine.ingress_denied_by.join(", ")
            ));
        }
        let engine = if p.engine.allowed {
            "allowed"
        } else {
            "denied"
        };
        let _ = writeln!(
            o,
            "  {} → {} :{}  engine {}{}",
            p.from,
            p.to,
            p.port,
            paint(engine, p.engine.allowed),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        );
        if let Some(a) = &p.attribution {
            let by = if a.policies.is_empty() {
                String::new()
            } else {
                format!(", by {}", a.policies.join(", "))
            };
            let via = if a.service.is_empty() {
                String::new()
            } else {
                format!(
                    " via {} to {}",
                    a.service.join(", "),
                    a.dst.map_or_else(|| "?".to_owned(), |d| d.to_string())
                )
            };
            let _ = writeln!(
                o,
                "      observer: blocked{via}, cause {}{}{by}{}",
                a.cause,
                a.direction
                    .as_deref()
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default(),
                a.kernel_reason
                    .as_deref()
                    .map(|r| format!("; kernel: {r}"))
                    .unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(
        o,
        "\ndifferential check (kernel: policies compiled to nftables, denied = a policy drop seen; vs the policy engine): {} probes, {} disagreements",
        report.probes.len(),
        report.disagreements
    );
    for p in report.probes.iter().filter(|p| !p.agree) {
        let _ = writeln!(
            o,
            "  DISAGREE {} ({}) → {} ({}) :{}: {}{}",
            p.from,
            p.src_ip,
            p.to,
            p.dst_ip,
            p.port,
            p.disagreement.as_deref().unwrap_or("?"),
            p.kernel
                .error
                .as_deref()
                .map(|e| format!(" (kernel: {e})"))
                .unwrap_or_default(),
        );
    }
    if report.observer_attached {
        let _ = writeln!(
            o,
            "plumbing check (observer records vs the same engine's denied_by): {} blocked probes, {} failures",
            report.probes.iter().filter(|p| !p.kernel.allowed).count(),
            report.plumbing_failures
        );
        for p in report
            .probes
            .iter()
            .filter_map(|p| Some((p, p.plumbing_failure.as_deref()?)))
        {
            let (p, why) = p;
            let _ = writeln!(
                o,
                "  PLUMBING {} ({}) → {} ({}) :{}: {why}",
                p.from, p.src_ip, p.to, p.dst_ip, p.port
            );
        }
    } else {
        let _ = writeln!(
            o,
            "observer not attached: kernel drops not seen (a failed probe counts as denied), no plumbing check"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_report_marks_and_lists_disagreements_without_colour_off_a_terminal() {
        let probe = |allowed_kernel: bool, allowed_engine: bool| ProbeResult {
            from: "a/x".into(),
            to: "b/y".into(),
            src_ip: "198.18.0.2".parse().expect("ip"),
            dst_ip: "198.18.0.3".parse().expect("ip"),
            port: 50051,
            protocol: Protocol::Tcp,
            kernel: KernelOutcome {
                allowed: allowed_kernel,
                denied: !allowed_kernel,
                drop_reason: None,
                error: None,
            },
            engine: EngineOutcome {
                allowed: allowed_engine,
                egress_denied_by: Vec::new(),
                ingress_denied_by: Vec::new(),
                backends: Vec::new(),
            },
            attribution: None,
            agree: allowed_kernel == allowed_engine,
            disagreement: (allowed_kernel != allowed_engine)
                .then(|| "kernel denied, engine allowed".into()),
            plumbing_failure: None,
        };
        let report = Report {
            node_netns: "obslab-1-node".into(),
            pods: Vec::new(),
            mapping: Vec::new(),
            warnings: Vec::new(),
            observer_attached: false,
            attached_interfaces: Vec::new(),
            probes: vec![probe(false, true)],
            disagreements: 1,
            plumbing_failures: 0,
        };
        let t = render_text(&report, false);
        assert!(t.contains("denied!"), "{t}");
        assert!(
            t.contains(
                "DISAGREE a/x (198.18.0.2) → b/y (198.18.0.3) :50051: kernel denied, engine allowed"
            ),
            "{t}"
        );
        assert!(!t.contains('\x1b'), "no colour off a terminal");
        assert!(render_text(&report, true).contains("\x1b[31mdenied!\x1b[0m"));
    }

    fn result(kernel: Result<(), String>, engine_allowed: bool) -> ProbeResult {
        ProbeResult {
            from: "a/x".into(),
            to: "b/y".into(),
            src_ip: "198.18.0.2".parse().expect("ip"),
            dst_ip: "198.18.0.3".parse().expect("ip"),
            port: 50051,
            protocol: Protocol::Tcp,
            kernel: KernelOutcome {
                allowed: kernel.is_ok(),
                denied: false,
                drop_reason: None,
                error: kernel.err(),
            },
            engine: EngineOutcome {
                allowed: engine_allowed,
                egress_denied_by: Vec::new(),
                ingress_denied_by: vec!["b/deny".into()],
                backends: Vec::new(),
            },
            attribution: None,
            agree: false,
            disagreement: None,
            plumbing_failure: None,
        }
    }

    #[test]
    fn a_failed_probe_is_denied_only_with_the_policy_drop_seen() {
        // The engine denies; the call failed but no drop was seen (the server was down): a disagreement.
        let mut p = result(Err("deadline of 1s exceeded".into()), false);
        compare(&mut p);
        assert!(!p.agree);
        assert_eq!(
            p.disagreement.as_deref(),
            Some("kernel failed without a policy drop seen, engine denied")
        );
        assert_eq!(p.kernel.word(), "failed");
        // The same with NETFILTER_DROP seen: agreement.
        p.kernel.drop_reason = Some(POLICY_DROP_REASON.into());
        p.kernel.denied = true;
        compare(&mut p);
        assert!(p.agree, "{:?}", p.disagreement);
        // Allowed by the kernel, denied by the engine.
        let mut p = result(Ok(()), false);
        compare(&mut p);
        assert_eq!(
            p.disagreement.as_deref(),
            Some("kernel allowed, engine denied")
        );
        // Without the observer (drops not seen), judge counts any failure as denied.
        let mut p = result(Err("connect: refused".into()), true);
        p.kernel.denied = true;
        compare(&mut p);
        assert_eq!(
            p.disagreement.as_deref(),
            Some("kernel denied, engine allowed")
        );
    }

    #[test]
    fn the_plumbing_check_holds_records_to_the_engines_denied_by() {
        let attribution = |policies: &[&str], records: usize| observe::Attribution {
            cause: "policy".into(),
            dst: None,
            service: Vec::new(),
            direction: Some("ingress".into()),
            policies: policies.iter().map(|s| (*s).to_owned()).collect(),
            kernel_reason: Some(POLICY_DROP_REASON.into()),
            records,
        };
        let mut probes = vec![
            result(Err("deadline".into()), false),
            result(Err("deadline".into()), false),
            result(Err("deadline".into()), false),
            result(Err("deadline".into()), false),
        ];
        probes[0].attribution = Some(attribution(&["b/deny"], 1));
        probes[1].attribution = Some(attribution(&["b/other"], 1));
        probes[2].attribution = Some(attribution(&["b/deny"], 2));
        check_plumbing(&mut probes);
        assert_eq!(probes[0].plumbing_failure, None);
        assert_eq!(
            probes[1].plumbing_failure.as_deref(),
            Some("the observer names [b/other], the engine denied_by [b/deny]")
        );
        assert_eq!(
            probes[2].plumbing_failure.as_deref(),
            Some("the observer wrote 2 records for one connection attempt")
        );
        assert_eq!(
            probes[3].plumbing_failure.as_deref(),
            Some("the observer reported no blocked channel")
        );
    }
}
