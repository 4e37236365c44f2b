//! `GET /api/v1/channels`: the live channel table as JSON. Stable contract: docs/CONTRACT.md ("Live
//! channels"); `observer whatif` reads it back with these types.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::record::{Direction, Endpoint, PolicyRef, ServiceRef, one_or_many, rfc3339};
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
    pub direction: Direction,
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
