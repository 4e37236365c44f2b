//! A small prefix map: CIDR → values, queried by address ("every prefix containing this IP").
//!
//! One hash map per (family, prefix length) that is in use: a lookup masks the address once per length, so
//! it costs at most 33 (IPv4) or 129 (IPv6) hash probes whatever the number of prefixes, and typically a
//! handful, since policies use few distinct lengths.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

/// Prefixes with values attached; a prefix may carry several values, a value several prefixes.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    /// (is IPv6, prefix length) → masked network bits → values.
    by_len: BTreeMap<(bool, u8), HashMap<u128, Vec<V>>>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self {
            by_len: BTreeMap::new(),
        }
    }
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn mask(v6: bool, value: u128, len: u8) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    let len = u32::from(len).min(width);
    if len == 0 {
        0
    } else {
        let shift = width - len;
        (value >> shift) << shift
    }
}

impl<V: PartialEq + Clone> PrefixMap<V> {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `value` to `net` (host bits are ignored).
    pub fn insert(&mut self, net: IpNet, value: V) {
        let (v6, b) = bits(net.addr());
        let len = net.prefix_len();
        self.by_len
            .entry((v6, len))
            .or_default()
            .entry(mask(v6, b, len))
            .or_default()
            .push(value);
    }

    /// Detaches `value` from every prefix.
    pub fn remove_value(&mut self, value: &V) {
        self.by_len.retain(|_, nets| {
            nets.retain(|_, vals| {
                vals.retain(|v| v != value);
                !vals.is_empty()
            });
            !nets.is_empty()
        });
    }

    /// Values of every prefix that contains `ip`, shortest prefix first.
    #[must_use]
    pub fn containing(&self, ip: IpAddr) -> Vec<V> {
        let (v6, b) = bits(ip);
        let mut out = Vec::new();
        for (&(fam, len), nets) in &self.by_len {
            if fam != v6 {
                continue;
            }
            if let Some(vals) = nets.get(&mask(v6, b, len)) {
                out.extend(vals.iter().cloned());
            }
        }
        out
    }

    /// Whether no prefix is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn finds_every_containing_prefix_of_the_same_family() {
        let mut m = PrefixMap::new();
        m.insert(net("10.0.0.0/8"), 1);
        m.insert(net("10.1.0.0/16"), 2);
        m.insert(net("0.0.0.0/0"), 3);
        m.insert(net("::/0"), 4);
        m.insert(net("fd00::/8"), 5);
        assert_eq!(m.containing("10.1.2.3".parse().expect("ip")), vec![3, 1, 2]);
        assert_eq!(m.containing("192.168.0.1".parse().expect("ip")), vec![3]);
        assert_eq!(m.containing("fd00::1".parse().expect("ip")), vec![4, 5]);
        m.remove_value(&3);
        assert_eq!(
            m.containing("192.168.0.1".parse().expect("ip")),
            Vec::<i32>::new()
        );
    }
}
