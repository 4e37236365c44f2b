//! `GET /api/v1/channels`: the live channel table as JSON. Stable contract: docs/CONTRACT.md ("Live
//! channels"); `observer whatif` reads it back with these types.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::record::{Directions, Endpoint, PolicyRef, ServiceRef, one_or_many, rfc3339};
use crate::channel::live::{LiveChannel, LiveTable};

/// The answer of `/api/v1/channels`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channels {
    /// The channels listed (all, or those of the `state` asked for), oldest first.
    pub channels: Vec<ChannelView>,
    /// Channels in the table, whatever their state.
    pub total: usize,
    /// Channels evicted since the daemon started because the table was full.
    pub evicted: u64,
}

/// One live channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    /// Unique for the daemon's lifetime; records about the channel carry it as `channel.id`.
    pub id: u64,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// As in records: an object for one Service, a list for several, absent for none.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub service: Vec<ServiceRef>,
    #[serde(with = "rfc3339")]
    pub established_at: SystemTime,
    /// The interface its SYN was seen on first.
    pub interface: Option<String>,
    pub state: ChannelState,
    /// The policies that allowed it when it was established, per direction, at their revision then.
    pub allowed_by: AllowedByView,
    /// Present when `state` is `stale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleView>,
}

/// `live`: the policies allow it (or allowed it at establishment and nothing since denies it); `stale`:
/// allowed at establishment, denied now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    Live,
    Stale,
}

impl ChannelState {
    /// Parses the `state` query parameter.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "stale" => Some(Self::Stale),
            _ => None,
        }
    }
}

/// `allowed_by`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedByView {
    pub ingress: Vec<PolicyRef>,
    pub egress: Vec<PolicyRef>,
}

/// `stale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StaleView {
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    pub direction: Directions,
    /// The policies denying it now, at their revision now.
    pub policies: Vec<PolicyRef>,
    /// The change that made it stale.
    pub change: String,
}

impl ChannelView {
    pub fn of(ch: &LiveChannel) -> Self {
        Self {
            id: ch.id,
            src: ch.src.clone(),
            dst: ch.dst.clone(),
            service: ch.service.clone(),
            established_at: ch.established_at,
            interface: ch.interface.as_deref().map(str::to_owned),
            state: if ch.stale.is_some() {
                ChannelState::Stale
            } else {
                ChannelState::Live
            },
            allowed_by: AllowedByView {
                ingress: ch.allowed_by.ingress.clone(),
                egress: ch.allowed_by.egress.clone(),
            },
            stale: ch.stale.as_ref().map(|s| StaleView {
                since: s.since,
                direction: s.direction,
                policies: s.policies.clone(),
                change: s.change.clone(),
            }),
        }
    }
}

/// The table's channels in `state` (all without), oldest first.
pub fn view(table: &LiveTable, state: Option<ChannelState>) -> Channels {
    Channels {
        channels: table
            .iter()
            .map(ChannelView::of)
            .filter(|v| state.is_none_or(|s| v.state == s))
            .collect(),
        total: table.len(),
        evicted: table.evicted(),
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::channel::live::{self, AllowedBy, Stale, Verdict};

    fn end(ip: &str, port: u16, ns: &str, pod: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().expect("ip"),
            port,
            kind: "pod".into(),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            node: Some("n1".into()),
            workload: None,
        }
    }

    fn policy(name: &str, rv: &str) -> PolicyRef {
        PolicyRef {
            kind: "NetworkPolicy".into(),
            namespace: "payments".into(),
            name: name.into(),
            direction: Directions::Ingress,
            uid: "u".into(),
            resource_version: rv.into(),
            nearest_miss: String::new(),
            changed_at: None,
            rule: None,
        }
    }

    fn table() -> LiveTable {
        let mut t = LiveTable::new(live::Config::default());
        for port in [40000u16, 40001] {
            let client = SocketAddr::new("198.18.0.2".parse().expect("ip"), port);
            t.insert(LiveChannel {
                id: 0,
                client,
                server: "198.18.1.2:50051".parse().expect("addr"),
                dialed: None,
                src: end("198.18.0.2", port, "shop", "checkout-0"),
                dst: end("198.18.1.2", 50051, "payments", "payments-0"),
                service: Vec::new(),
                established_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
                last_ns: 0,
                interface: Some("lxca".into()),
                allowed_by: AllowedBy {
                    ingress: vec![policy("allow-checkout", "81240")],
                    egress: Vec::new(),
                },
                verdict: Verdict::Allowed,
                stale: None,
                counted: true,
                stalls: [None; 2],
            });
        }
        let id = t.ids().next().expect("one");
        t.set_state(
            id,
            Verdict::Denied,
            Some(Stale {
                since: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000),
                direction: Directions::Ingress,
                policies: vec![policy("default-deny", "81233")],
                change: "NetworkPolicy payments/allow-checkout deleted (rv 81240)".into(),
                counted: true,
            }),
        );
        t
    }

    #[test]
    fn the_view_has_the_documented_shape_filters_by_state_and_reads_back() {
        let t = table();
        let all = view(&t, None);
        let v = serde_json::to_value(&all).expect("json");
        assert_eq!(v["total"], 2);
        assert_eq!(v["evicted"], 0);
        let stale = &v["channels"][0];
        assert_eq!(stale["state"], "stale");
        assert_eq!(stale["established_at"], "1970-01-01T00:16:40.000Z");
        assert_eq!(stale["interface"], "lxca");
        assert!(stale.get("service").is_none(), "absent when none");
        assert_eq!(
            stale["allowed_by"]["ingress"][0]["resource_version"],
            "81240"
        );
        assert_eq!(stale["allowed_by"]["egress"], serde_json::json!([]));
        assert_eq!(stale["stale"]["direction"], "ingress");
        assert_eq!(stale["stale"]["policies"][0]["name"], "default-deny");
        assert!(
            stale["stale"]["change"]
                .as_str()
                .is_some_and(|c| c.contains("deleted"))
        );
        assert_eq!(v["channels"][1]["state"], "live");
        assert!(v["channels"][1].get("stale").is_none());
        let back: Channels = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, all);

        let only = view(&t, ChannelState::parse("stale"));
        assert_eq!(only.channels.len(), 1);
        assert_eq!(only.total, 2);
        assert_eq!(view(&t, ChannelState::parse("live")).channels.len(), 1);
        assert_eq!(ChannelState::parse("gone"), None);
    }
}
