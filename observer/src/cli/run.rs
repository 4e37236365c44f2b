//! `observer run`: the node daemon.
//!
//! ```text
//!  ring buffer ─▶ Pipeline (channel → attribution) ─▶ Exports (log, recent, metrics) ─▶ HTTP API
//!  rtnetlink ───▶ Datapath attach/detach                 ▲
//!  cluster source (kube watch | manifest files) ─▶ Inventory
//! ```
//!
//! One thread: the programs are attached in this process's network namespace, and the work per event
//! is small. Clean shutdown on SIGINT/SIGTERM: link follower stopped, programs detached, API closed, log
//! flushed.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use clap::Args;

use crate::{
    bpf::{
        AttachMode, Datapath, DatapathConfig, Hooks, KernelEvent, cni,
        links::{self, AbortOnDrop, LinkChange},
        loader::{DEFAULT_INTERFACES, DEFAULT_PORTS},
    },
    channel::{
        self,
        live::{self, LiveTable, SharedLive},
    },
    cluster::{Inventory, InventoryConfig, SharedInventory, files::FileSource, kube::KubeSource},
    export::{
        ApiArgs, ApiState, Exports, KubeAuth, LogArgs, Metrics, Readiness, Recent, Surface,
        UsageSource,
        events::{self, EventSink, EventsConfig},
    },
    pipeline::Pipeline,
    usage::Usage,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Cluster from manifest files or directories (reloaded on change) instead of the Kubernetes API
    /// (in-cluster config or kubeconfig).
    #[arg(long, env = "OBSERVER_CLUSTER", value_delimiter = ',', num_args = 1..)]
    pub cluster: Vec<PathBuf>,
    /// Interface name globs to attach to (comma-separated); interfaces that appear later are attached
    /// too. Default: derived from the CNI detected from the node's interfaces at startup (printed; see
    /// docs/CNI.md), or a generic list when none is recognised.
    #[arg(long, env = "OBSERVER_INTERFACES", value_delimiter = ',')]
    pub interfaces: Vec<String>,
    /// Watched TCP (gRPC) ports, comma-separated.
    #[arg(long, env = "OBSERVER_PORTS", value_delimiter = ',', default_values_t = DEFAULT_PORTS.to_vec())]
    pub ports: Vec<u16>,
    /// Watch every TCP port (more events, more flow-table entries).
    #[arg(long, env = "OBSERVER_ALL_PORTS")]
    pub all_ports: bool,
    /// How TC programs are attached.
    #[arg(long, env = "OBSERVER_ATTACH_MODE", value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Which TC hooks of each interface carry the observer: `entry` (ingress only: each packet once,
    /// where it enters the node — half the hook runs per packet; what the node sends itself comes from
    /// programs reporting state changes), `both` (ingress and egress), or `sockets` (no program on pods'
    /// veths at all: pods' sockets report their attempts and state changes, drops keep their reason; the
    /// uplink and tunnels keep `entry`). See docs/CNI.md, "Hooks".
    #[arg(long, env = "OBSERVER_HOOKS", value_enum, default_value_t = Hooks::Entry)]
    pub hooks: Hooks,
    /// With `--hooks entry` or `sockets`: the cgroup v2 directory whose processes' `connect()`s are watched for the
    /// node's own clients (hostNetwork pods; their SYNs cross no ingress hook) — the host's cgroup2 root,
    /// as mounted in the container. Default: the first cgroup2 mount (docs/CNI.md, "Hooks").
    #[arg(long, env = "OBSERVER_CGROUP")]
    pub cgroup: Option<std::path::PathBuf>,
    /// This node's name (from the downward API in a DaemonSet).
    #[arg(long, env = "OBSERVER_NODE_NAME", default_value = "")]
    pub node_name: String,
    /// A SYN retransmitted with no SYN-ACK for this long makes the channel blocked (when no drop, reset
    /// or rejection said so earlier).
    #[arg(long, env = "OBSERVER_BLOCKED_WINDOW", value_parser = humantime::parse_duration, default_value = "3s")]
    pub blocked_window: Duration,
    /// A drop of the same flow for the same reason is reported again by the kernel after this long.
    #[arg(long, env = "OBSERVER_DROP_REPEAT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub drop_repeat: Duration,
    /// New-flow events the kernel sends up per second per source (a hash bucket of client addresses)
    /// and CPU, with as large a burst; beyond it they are counted in
    /// `observer_events_suppressed_total`. 0: no limit.
    #[arg(long, env = "OBSERVER_NEW_FLOW_RATE", default_value_t = observer_common::DEFAULT_NEW_FLOW_RATE)]
    pub new_flow_rate: u32,
    /// Also print every decoded kernel event (one line each) to stderr.
    #[arg(long, env = "OBSERVER_PRINT_EVENTS")]
    pub print_events: bool,
    /// Write an `established` record for every established channel (off by default: one per connection).
    #[arg(long, env = "OBSERVER_LOG_ESTABLISHED")]
    pub log_established: bool,
    /// Live channels kept in the table (`/api/v1/channels`, stale detection); beyond, the oldest is
    /// evicted and counted in `observer_live_channels_evicted_total`.
    #[arg(long, env = "OBSERVER_MAX_LIVE_CHANNELS", default_value_t = 131_072)]
    pub max_live_channels: usize,
    /// A live channel with no event (FIN, reset, drop) for this long is forgotten.
    #[arg(long, env = "OBSERVER_LIVE_IDLE", value_parser = humantime::parse_duration, default_value = "24h")]
    pub live_idle: Duration,
    /// A live channel whose sender reaches this many consecutive retransmission timeouts (with no FIN,
    /// reset or drop seen) ends as `interrupted`: its packets vanish where this node's kernel cannot see
    /// (docs/CONTRACT.md, "Interrupted by retransmission timeouts"). Fewer, then an ACK that makes
    /// progress, keep it live.
    #[arg(long, env = "OBSERVER_CUT_AFTER_RTOS", default_value_t = crate::pipeline::DEFAULT_CUT_AFTER_RTOS, value_parser = clap::value_parser!(u16).range(1..))]
    pub cut_after_rtos: u16,
    /// Write Kubernetes Events (events.k8s.io/v1) on the pods whose side denied a channel
    /// (`NetworkPolicyDenied`), and for unenforced, stale-allowed and interrupted channels; correlated and
    /// rate-limited like client-go's (docs/CONTRACT.md, "Kubernetes Events"). Needs the Kubernetes API.
    #[arg(long, env = "OBSERVER_EVENTS")]
    pub events: bool,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

/// CLOCK_MONOTONIC in ns: the kernel events' clock.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let readiness = Arc::new(Readiness::new());
    let recent = Arc::new(Recent::new(args.api.recent_records));
    let log = args.log.open()?;
    let mut exports = Exports::new(log, recent.clone(), metrics.clone());

    // Cluster inventory and its source.
    let inventory = SharedInventory::new(Inventory::new(InventoryConfig::default()));
    let source = if args.cluster.is_empty() {
        let source = KubeSource::try_default(inventory.clone())
            .await
            .context("connecting to the Kubernetes API (or pass --cluster FILES)")?;
        tracing::info!(
            "cluster: watching the Kubernetes API (pods, namespaces, nodes, networkpolicies)"
        );
        tokio::spawn(source.run())
    } else {
        // `run` loads first, then reloads on change; a broken load keeps the last good state.
        let source = FileSource::new(args.cluster.clone(), inventory.clone());
        tracing::info!(paths = ?args.cluster, "cluster: manifest files, reloaded on change");
        tokio::spawn(async move {
            if let Err(e) = source.run().await {
                tracing::error!(error = %e, "cluster manifests: cannot watch the paths");
            }
        })
    };
    let _source = AbortOnDrop(source);

    // Kernel side.
    let interfaces = if args.interfaces.is_empty() {
        let names = cni::node_interfaces().context("listing the node's interfaces")?;
        let detected = cni::detect(&names, DEFAULT_INTERFACES);
        tracing::info!(
            cni = %detected,
            evidence = ?detected.evidence.iter().map(|(i, c)| format!("{i}: {c}")).collect::<Vec<_>>(),
            "interfaces: detected from the node"
        );
        detected.globs
    } else {
        args.interfaces.clone()
    };
    let config = DatapathConfig {
        interfaces: interfaces.clone(),
        ports: args.ports.clone(),
        all_ports: args.all_ports,
        attach_mode: args.attach_mode,
        hooks: args.hooks,
        cgroup: args.cgroup.clone(),
        drop_repeat: args.drop_repeat,
        new_flow_rate: args.new_flow_rate,
        new_flow_burst: args.new_flow_rate.max(1),
    };
    let mut datapath = Datapath::load(&config)?;
    let mut events = datapath.events()?;
    events.load_symbols();
    tracing::info!(
        drop_program = datapath.drop_program(),
        retransmit_program = datapath.retransmit_program().unwrap_or("none (see the warning above)"),
        drop_reasons = datapath.reasons().len(),
        hooks = datapath.hooks().as_str(),
        node_programs = ?datapath.node_programs().iter().filter(|(_, r)| r.is_ok()).map(|(n, _)| *n).collect::<Vec<_>>(),
        ports = ?if args.all_ports { None } else { Some(&args.ports) },
        interfaces = ?interfaces,
        "programs loaded"
    );
    for (program, attached) in datapath.programs() {
        metrics
            .kernel_programs
            .with_label_values(&[program])
            .set(i64::from(attached));
    }
    let datapath = Arc::new(Mutex::new(datapath));
    // Boxed so that it can be dropped (releasing its handle on the datapath) before shutdown.
    let mut follower = Box::pin(links::follow(datapath.clone(), |change| match change {
        LinkChange::Attached { ifindex, name } => {
            tracing::info!(interface = %name, ifindex, "attached")
        }
        LinkChange::LeftToSockets { ifindex, name } => {
            tracing::info!(interface = %name, ifindex, "a pod's veth: no TC program, its pod's sockets report (--hooks sockets)")
        }
        LinkChange::Detached { ifindex, name } => {
            tracing::info!(interface = %name, ifindex, "interface gone, detached")
        }
        LinkChange::Failed {
            ifindex,
            name,
            error,
        } => tracing::warn!(interface = %name, ifindex, %error, "attach failed"),
        LinkChange::Moved {
            ifindex,
            name,
            hook,
            ahead_of,
            first,
        } => tracing::warn!(interface = %name, ifindex, hook, ahead_of = %ahead_of, first,
            "another program had gone ahead of ours: ours attached in front again"),
    }));

    // HTTP: the public listener (metrics, health), and the records API, behind Kubernetes authentication
    // when it leaves loopback.
    let live = SharedLive::new(LiveTable::new(live::Config {
        max_channels: args.max_live_channels,
        idle: args.live_idle,
    }));
    let usage = Usage::shared(SystemTime::now());
    let state = ApiState::new(metrics.clone(), recent.clone(), readiness.clone())
        .with_channels(live.clone())
        .with_usage(UsageSource {
            table: usage.clone(),
            inventory: inventory.clone(),
            node: args.node_name.clone(),
        });
    // Kubernetes Events: a writer task fed through a bounded queue (the loop below never waits on it).
    let (event_sink, event_writer) = if args.events {
        let client = ::kube::Client::try_default()
            .await
            .context("--events writes Kubernetes Events: connecting to the Kubernetes API")?;
        let config = EventsConfig {
            instance: if args.node_name.is_empty() {
                events::CONTROLLER.to_owned()
            } else {
                args.node_name.clone()
            },
            ..EventsConfig::default()
        };
        tracing::info!(instance = %config.instance, "writing Kubernetes Events (events.k8s.io/v1)");
        let (sink, task) = events::start(client, config, metrics.clone(), Some(inventory.clone()));
        (Some(sink), Some(task))
    } else {
        (None, None)
    };
    let auth = if args.api.api_needs_auth() {
        let client = ::kube::Client::try_default().await.with_context(|| {
            format!(
                "--api-listen {} is not a loopback address, so /api/* needs Kubernetes authentication:                  connecting to the Kubernetes API",
                args.api.api_listen
            )
        })?;
        Some(KubeAuth::new(client))
    } else {
        None
    };
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for (addr, surface, what) in [
        (
            args.api.listen,
            Surface::Public,
            "/metrics /healthz /readyz",
        ),
        (
            args.api.api_listen,
            Surface::Api { auth: auth.clone() },
            if auth.is_some() {
                "/api/v1/blocked /api/v1/channels (bearer token: TokenReview + SubjectAccessReview)"
            } else {
                "/api/v1/blocked /api/v1/channels (loopback, no authentication)"
            },
        ),
    ] {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {addr} ({what})"))?;
        tracing::info!(listen = %addr, "serving {what}");
        let mut stopped = api_stopped.clone();
        servers.push(tokio::spawn(crate::export::serve(
            listener,
            state.clone(),
            surface,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
    }

    let pipeline = Pipeline::new(
        channel::Config {
            blocked_window: args.blocked_window,
            ..channel::Config::default()
        },
        metrics.clone(),
        inventory.clone(),
        args.node_name.clone(),
    )
    .with_live(live, args.log_established)
    .with_cut_after_rtos(args.cut_after_rtos)
    .with_usage(usage.clone());
    // The backends of silent Service attempts, from this namespace's conntrack (kube-proxy's DNAT).
    let pipeline = match crate::conntrack::Conntrack::open() {
        Ok(ct) => pipeline.with_nat_lookup(Box::new(ct)),
        Err(e) => {
            tracing::warn!(error = %e, "no conntrack lookups: blocked Service attempts nothing answered keep their VIP as dst");
            pipeline
        }
    };
    let mut pipeline = pipeline;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // The pipeline's tick: fine while evidence settles, coarse otherwise (`Pipeline::next_tick`).
    let mut next_tick = tokio::time::Instant::now() + pipeline.next_tick();
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    let mut batch: Vec<KernelEvent> = Vec::new();
    let mut records = Vec::new();
    let mut lost_seen = 0u64;
    let mut suppressed_seen = 0u64;
    let mut malformed_seen = 0u64;
    let mut stderr = std::io::stderr();

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            r = &mut follower => break r.map_err(anyhow::Error::from),
            r = events.next_batch(&mut batch) => {
                r.context("reading kernel events")?;
                if args.print_events {
                    for ev in &batch {
                        let _ = print_event(&mut stderr, ev);
                    }
                }
                pipeline.on_events(&batch, &mut records);
                batch.clear();
                pipeline.tick(monotonic_ns(), SystemTime::now(), &mut records);
                emit(&mut exports, event_sink.as_ref(), &mut records);
                next_tick = tokio::time::Instant::now() + pipeline.next_tick();
            }
            _ = tokio::time::sleep_until(next_tick) => {
                pipeline.tick(monotonic_ns(), SystemTime::now(), &mut records);
                emit(&mut exports, event_sink.as_ref(), &mut records);
                next_tick = tokio::time::Instant::now() + pipeline.next_tick();
            }
            _ = housekeeping.tick() => {
                let (lost, suppressed, attached, sockets_ready) = match datapath.lock() {
                    Ok(d) => (d.lost_events(), d.suppressed_events(), d.attached().len(), d.sockets_ready()),
                    Err(_) => (lost_seen, suppressed_seen, 0, false),
                };
                metrics.events_lost.inc_by(lost.saturating_sub(lost_seen));
                lost_seen = lost.max(lost_seen);
                pipeline.lost_events(lost_seen, SystemTime::now(), &mut records);
                emit(&mut exports, event_sink.as_ref(), &mut records);
                metrics.events_suppressed.inc_by(suppressed.saturating_sub(suppressed_seen));
                suppressed_seen = suppressed.max(suppressed_seen);
                metrics.events_malformed.inc_by(events.malformed().saturating_sub(malformed_seen));
                malformed_seen = events.malformed().max(malformed_seen);
                metrics.attached_interfaces.set(i64::try_from(attached).unwrap_or(i64::MAX));
                // `--hooks sockets` on a node whose interfaces are all pods' veths attaches no TC
                // program: its socket programs are what observes.
                readiness.set_attached(attached > 0 || sockets_ready);
                let (ready, counts) = {
                    let inv = inventory.read();
                    (inv.is_ready(), inv.counts())
                };
                for (kind, n) in counts.by_kind() {
                    metrics.inventory_objects.with_label_values(&[kind]).set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                metrics.cluster_synced.set(i64::from(ready));
                let (never_policies, never_rules) = {
                    let inv = inventory.read();
                    crate::usage::lock(&usage).never_hit(inv.engine())
                };
                metrics.policies_never_hit.with_label_values(&["policy"]).set(i64::try_from(never_policies).unwrap_or(i64::MAX));
                metrics.policies_never_hit.with_label_values(&["rule"]).set(i64::try_from(never_rules).unwrap_or(i64::MAX));
                readiness.set_synced(ready);
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break Ok(()) }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break Ok(()) }
        }
    };

    drop(follower);
    let _ = stop_api.send(true);
    for server in servers {
        if let Ok(Err(e)) = server.await {
            tracing::warn!(error = %e, "HTTP listener");
        }
    }
    // The Event writer flushes its pending series once the queue closes.
    drop(event_sink);
    if let Some(task) = event_writer
        && tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
    {
        tracing::warn!("Kubernetes Events: the last series updates were not written in time");
    }
    if let Err(e) = exports.log.flush() {
        tracing::warn!(error = %e, "flushing the forensics log");
    }
    if let Some(dp) = Arc::into_inner(datapath).and_then(|m| m.into_inner().ok()) {
        let n = dp.attached().len();
        let lost = dp.lost_events();
        let suppressed = dp.suppressed_events();
        dp.shutdown();
        tracing::info!(
            interfaces = n,
            lost_events = lost,
            suppressed_events = suppressed,
            malformed = events.malformed(),
            "detached"
        );
    }
    result
}

fn emit(
    exports: &mut Exports,
    events: Option<&EventSink>,
    records: &mut Vec<crate::export::Record>,
) {
    if records.is_empty() {
        return;
    }
    if let Some(sink) = events {
        for r in records.iter() {
            sink.offer(r);
        }
    }
    if let Err(e) = exports.emit_all(records.drain(..)) {
        tracing::warn!(error = %e, "writing the forensics log");
    }
}

/// One decoded kernel event as a text line (`--print-events`).
pub fn print_event(out: &mut impl std::io::Write, ev: &KernelEvent) -> std::io::Result<()> {
    let time = humantime::format_rfc3339_millis(ev.time);
    let iface = ev.interface.as_deref().unwrap_or("?");
    write!(
        out,
        "{time} {:<14} {} → {} on {iface}({}) {:?}",
        ev.kind.as_str(),
        ev.client,
        ev.server,
        ev.ifindex,
        ev.hook,
    )?;
    if let Some(d) = &ev.drop {
        write!(out, " reason={} at {}", d.reason_name, d.call_site)?;
    }
    if let Some((t, c)) = ev.icmp {
        write!(out, " icmp={t}/{c}")?;
    }
    if ev.kind == crate::bpf::Kind::RetransmitTimeout {
        write!(
            out,
            " rtos={} by={:?} netns={}",
            ev.syn_count, ev.origin, ev.netns
        )?;
    } else if ev.syn_count > 1 {
        write!(out, " syns={}", ev.syn_count)?;
    }
    writeln!(out)
}
