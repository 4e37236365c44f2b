//! Names for the kernel's drop reasons and call sites.
//!
//! `enum skb_drop_reason` is renumbered between kernel versions, so numbers are named from the running
//! kernel's BTF, never from a table compiled in. Call sites (the `location` argument of `kfree_skb`) are
//! named from `/proc/kallsyms` when it shows addresses (root).

use std::{collections::HashMap, sync::Arc};

use super::btf::{Btf, BtfError};

/// Reasons `kfree_skb` reports that are not drops of interest: packets freed normally, and queues purged
/// when a socket closes (what `observer` must not mistake for a policy drop).
pub const NOT_DROPS: &[&str] = &["NOT_DROPPED_YET", "CONSUMED", "QUEUE_PURGE"];

/// The stack's own discards under load — a full backlog, receive buffer or ring, TCP's duplicate,
/// out-of-order and out-of-window segments — reported only for a flow's state-changing packets (SYN,
/// FIN, RST): a SYN lost to a full backlog is evidence about its attempt; a data packet's is routine
/// (tens of thousands a second on a loaded node) and no channel's fate
/// (`observer_common::reason_class::STATE_PACKETS_ONLY`).
pub const STACK_DISCARDS: &[&str] = &[
    "CPU_BACKLOG",
    "SOCKET_RCVBUFF",
    "SOCKET_BACKLOG",
    "PROTO_MEM",
    "FULL_RING",
    "NOMEM",
    "TCP_ZEROWINDOW",
    "TCP_OLD_DATA",
    "TCP_OVERWINDOW",
    "TCP_OFOMERGE",
    "TCP_OFO_DROP",
    "TCP_OFO_QUEUE_PRUNE",
    "TCP_RFC7323_PAWS",
    "TCP_RFC7323_PAWS_ACK",
    "TCP_RFC7323_TW_PAWS",
    "TCP_RFC7323_TSECR",
    "TCP_OLD_SEQUENCE",
    "TCP_INVALID_SEQUENCE",
    "TCP_INVALID_END_SEQUENCE",
    "TCP_INVALID_ACK_SEQUENCE",
    "TCP_OLD_ACK",
    "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA",
];

/// Whether `name` is one of [`STACK_DISCARDS`].
pub fn is_stack_discard(name: &str) -> bool {
    STACK_DISCARDS.contains(&name)
}

/// Drop reason number → UPPER_SNAKE name (without the `SKB_DROP_REASON_` prefix).
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    /// foldhash: looked up for every drop event.
    names: HashMap<u32, Arc<str>, foldhash::fast::RandomState>,
}

impl DropReasons {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let names = btf
            .enum_values("skb_drop_reason")?
            .into_iter()
            .filter_map(|(name, value)| {
                let short = name
                    .strip_prefix("SKB_DROP_REASON_")
                    .or_else(|| name.strip_prefix("SKB_"))
                    .unwrap_or(&name);
                Some((u32::try_from(value).ok()?, Arc::from(short)))
            })
            .collect();
        Ok(Self { names })
    }

    /// For tests and replays: a fixed table.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        Self {
            names: pairs.into_iter().map(|(v, n)| (v, Arc::from(n))).collect(),
        }
    }

    /// The reason's name, or `REASON_<n>` for a number this kernel does not name.
    pub fn name(&self, reason: u32) -> Arc<str> {
        self.names
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| Arc::from(format!("REASON_{reason}")))
    }

    /// The numbers of [`NOT_DROPS`] on this kernel.
    pub fn not_drops(&self) -> Vec<u32> {
        self.numbers_of(NOT_DROPS)
    }

    /// The numbers of [`STACK_DISCARDS`] on this kernel.
    pub fn stack_discards(&self) -> Vec<u32> {
        self.numbers_of(STACK_DISCARDS)
    }

    fn numbers_of(&self, names: &[&str]) -> Vec<u32> {
        self.names
            .iter()
            .filter(|(_, n)| names.contains(&&***n))
            .map(|(v, _)| *v)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Kernel text symbols, to name a drop's call site (`nft_do_chain+0x1f4`).
#[derive(Debug, Default)]
pub struct Symbols {
    /// Sorted by address.
    syms: Vec<(u64, Box<str>)>,
}

impl Symbols {
    /// Reads `/proc/kallsyms`. Without privileges it shows zero addresses: the result is then empty and
    /// call sites are printed as addresses.
    pub fn kallsyms() -> Self {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, Box<str>)> = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, Box::from(name)))
            })
            .collect();
        syms.sort_unstable_by_key(|(a, _)| *a);
        Self { syms }
    }

    /// `symbol+0xoff`, or the bare address when unknown.
    pub fn name(&self, addr: u64) -> String {
        match self.syms.partition_point(|(a, _)| *a <= addr) {
            0 => format!("{addr:#x}"),
            i => {
                let (start, name) = &self.syms[i - 1];
                format!("{name}+{:#x}", addr - start)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_reason_numbers_get_a_stable_name() {
        let r = DropReasons::from_pairs([(2, "NOT_SPECIFIED"), (77, "NETFILTER_DROP")]);
        assert_eq!(&*r.name(77), "NETFILTER_DROP");
        assert_eq!(&*r.name(9999), "REASON_9999");
    }

    #[test]
    fn not_drops_are_found_by_name_whatever_their_number() {
        let r = DropReasons::from_pairs([
            (0, "NOT_DROPPED_YET"),
            (1, "CONSUMED"),
            (5, "X"),
            (93, "QUEUE_PURGE"),
        ]);
        let mut v = r.not_drops();
        v.sort_unstable();
        assert_eq!(v, vec![0, 1, 93]);
    }

    #[test]
    fn stack_discards_are_found_by_name_and_policy_drops_are_not_among_them() {
        let r = DropReasons::from_pairs([
            (2, "NOT_SPECIFIED"),
            (12, "NETFILTER_DROP"),
            (34, "TCP_OLD_DATA"),
            (77, "CPU_BACKLOG"),
            (80, "TC_INGRESS"),
        ]);
        let mut v = r.stack_discards();
        v.sort_unstable();
        assert_eq!(v, vec![34, 77]);
        for policy in [
            "NETFILTER_DROP",
            "TC_INGRESS",
            "TC_EGRESS",
            "NOT_SPECIFIED",
            "NO_SOCKET",
        ] {
            assert!(!is_stack_discard(policy), "{policy}");
        }
        assert!(STACK_DISCARDS.iter().all(|n| !NOT_DROPS.contains(n)));
    }

    #[test]
    fn this_kernel_has_the_stack_discards_by_these_names() {
        let btf = Btf::vmlinux().expect("BTF");
        let r = DropReasons::from_btf(&btf).expect("skb_drop_reason");
        // A name dropped or renamed by a kernel would silently fall back to "reported": say so here.
        let found = r.stack_discards().len();
        assert_eq!(found, STACK_DISCARDS.len(), "{found} of {STACK_DISCARDS:?}");
    }

    #[test]
    fn call_sites_are_symbol_plus_offset() {
        let s = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81a00000 t nft_do_chain\nffffffff81a00400 T other\n0000000000000000 T zero\n",
        );
        assert_eq!(s.name(0xffffffff81a001f4), "nft_do_chain+0x1f4");
        assert_eq!(s.name(0x10), "0x10");
    }

    #[test]
    fn this_kernel_names_netfilter_drop() {
        let btf = Btf::vmlinux().expect("BTF");
        let r = DropReasons::from_btf(&btf).expect("skb_drop_reason");
        assert!(r.len() > 10);
        assert!(r.names.values().any(|n| &**n == "NETFILTER_DROP"));
        assert!(r.names.values().any(|n| &**n == "NOT_DROPPED_YET"));
    }
}
