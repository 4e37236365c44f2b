//! `observer run`: the node daemon.

use std::{
    io::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::bpf::{
    AttachMode, Datapath, DatapathConfig, KernelEvent,
    links::{self, LinkChange},
    loader::{DEFAULT_INTERFACES, DEFAULT_PORTS},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface name globs to attach to (comma-separated); interfaces that appear later are attached too.
    #[arg(long, env = "OBSERVER_INTERFACES", value_delimiter = ',', default_values_t = DEFAULT_INTERFACES.iter().map(|s| (*s).to_owned()))]
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
    /// Output format of the event log on stdout.
    #[arg(long, env = "OBSERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// This node's name (from the downward API in a DaemonSet).
    #[arg(long, env = "OBSERVER_NODE_NAME", default_value = "")]
    pub node_name: String,
    /// A drop of the same flow for the same reason is reported again after this long.
    #[arg(long, env = "OBSERVER_DROP_REPEAT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub drop_repeat: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One thread: the programs are attached in this process's network namespace, and a multi-threaded
    // runtime would not change anything for a daemon this size.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = DatapathConfig {
        interfaces: args.interfaces.clone(),
        ports: args.ports.clone(),
        all_ports: args.all_ports,
        attach_mode: args.attach_mode,
        drop_repeat: args.drop_repeat,
    };
    let mut datapath = Datapath::load(&config)?;
    let mut events = datapath.events()?;
    tracing::info!(
        drop_program = datapath.drop_program(),
        drop_reasons = datapath.reasons().len(),
        ports = ?if args.all_ports { None } else { Some(&args.ports) },
        interfaces = ?args.interfaces,
        "loaded"
    );
    let datapath = Arc::new(Mutex::new(datapath));

    // Boxed so that it can be dropped (releasing its handle on the datapath) before shutdown.
    let mut follower = Box::pin(links::follow(datapath.clone(), |change| match change {
        LinkChange::Attached { ifindex, name } => {
            tracing::info!(interface = %name, ifindex, "attached")
        }
        LinkChange::Detached { ifindex, name } => {
            tracing::info!(interface = %name, ifindex, "interface gone, detached")
        }
        LinkChange::Failed {
            ifindex,
            name,
            error,
        } => tracing::warn!(interface = %name, ifindex, %error, "attach failed"),
    }));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut batch = Vec::new();
    let mut out = std::io::stdout().lock();
    let result = loop {
        tokio::select! {
            r = &mut follower => break r.map_err(anyhow::Error::from),
            r = events.next_batch(&mut batch) => {
                r.context("reading kernel events")?;
                for ev in batch.drain(..) {
                    print_event(&mut out, &ev, args.log_format, &args.node_name)?;
                }
                out.flush()?;
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break Ok(()) }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break Ok(()) }
        }
    };
    drop(follower);
    let lost = datapath.lock().map(|d| d.lost_events()).unwrap_or(0);
    if let Some(dp) = Arc::into_inner(datapath).and_then(|m| m.into_inner().ok()) {
        let n = dp.attached().len();
        dp.shutdown();
        tracing::info!(
            interfaces = n,
            lost_events = lost,
            malformed = events.malformed(),
            "detached"
        );
    }
    result
}

fn print_event(
    out: &mut impl std::io::Write,
    ev: &KernelEvent,
    format: LogFormat,
    node: &str,
) -> std::io::Result<()> {
    match format {
        LogFormat::Json => {
            let mut v = serde_json::to_value(ev).map_err(std::io::Error::other)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("node".into(), node.into());
            }
            writeln!(out, "{v}")
        }
        LogFormat::Text => {
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
            if ev.syn_count > 1 {
                write!(out, " syns={}", ev.syn_count)?;
            }
            writeln!(
                out,
                " pkts={}/{} bytes={}/{}",
                ev.packets[0], ev.packets[1], ev.bytes[0], ev.bytes[1]
            )
        }
    }
}
