//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and enum values.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the drop program gets the offsets of the `sk_buff` and
//! `net_device` members it reads from here, at startup, for the running kernel. `aya::Btf` parses BTF
//! but does not expose members, hence this reader (~40 ms for vmlinux).

use std::{collections::HashMap, path::Path};

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not BTF ({what})")]
    Malformed { path: String, what: &'static str },
    #[error("{path}: no {kind} named `{name}`")]
    NotFound {
        path: String,
        kind: &'static str,
        name: String,
    },
    #[error("{path}: `{strukt}` has no member `{member}`")]
    NoMember {
        path: String,
        strukt: String,
        member: String,
    },
    #[error("{path}: `{strukt}.{member}` is a bitfield")]
    Bitfield {
        path: String,
        strukt: String,
        member: String,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type of the type section, with the position of its trailing data.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    size_or_type: u32,
    /// Byte offset of the kind-specific data following the header.
    extra: usize,
}

/// Parsed BTF: the raw bytes plus an index of types and names.
pub struct Btf {
    path: String,
    data: Vec<u8>,
    strings: (usize, usize),
    types: Vec<Type>,
    by_name: HashMap<(u32, String), Vec<u32>>,
}

impl Btf {
    /// Reads and indexes the BTF of the running kernel.
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path.display().to_string(), data)
    }

    pub fn parse(path: String, data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = |what| BtfError::Malformed {
            path: path.clone(),
            what,
        };
        let u32_at = |data: &[u8], off: usize| -> Option<u32> {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(bad("bad magic or big-endian BTF"));
        }
        let hdr_len = u32_at(&data, 4).ok_or_else(|| bad("header"))? as usize;
        let type_off = u32_at(&data, 8).ok_or_else(|| bad("header"))? as usize;
        let type_len = u32_at(&data, 12).ok_or_else(|| bad("header"))? as usize;
        let str_off = u32_at(&data, 16).ok_or_else(|| bad("header"))? as usize;
        let str_len = u32_at(&data, 20).ok_or_else(|| bad("header"))? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = (hdr_len + str_off, hdr_len + str_off + str_len);
        if types_end > data.len() || strings.1 > data.len() {
            return Err(bad("sections beyond the end of the data"));
        }

        // Type ids start at 1; index 0 is `void`.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            vlen: 0,
            size_or_type: 0,
            extra: 0,
        }];
        let mut off = types_start;
        while off + 12 <= types_end {
            let name_off = u32_at(&data, off).ok_or_else(|| bad("type"))?;
            let info = u32_at(&data, off + 4).ok_or_else(|| bad("type"))?;
            let size_or_type = u32_at(&data, off + 8).ok_or_else(|| bad("type"))?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = off + 12;
            let trailing = match kind {
                1 | 14 | 17 => 4,              // INT, VAR, DECL_TAG
                3 => 12,                       // ARRAY
                4 | 5 => 12 * vlen as usize,   // STRUCT, UNION
                6 | 13 => 8 * vlen as usize,   // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen as usize, // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(bad("unknown type kind")),
            };
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 != 0,
                vlen,
                size_or_type,
                extra,
            });
            off = extra + trailing;
        }
        let mut btf = Self {
            path,
            data,
            strings,
            types,
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<(u32, String), Vec<u32>> = HashMap::new();
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if t.name_off != 0
                && matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64)
            {
                by_name
                    .entry((t.kind, btf.name(t.name_off).to_owned()))
                    .or_default()
                    .push(id as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings.0 + off as usize;
        let Some(rest) = self.data.get(start..self.strings.1) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn u32_at(&self, off: usize) -> u32 {
        self.data
            .get(off..off + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous structs and unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let ids = self
            .by_name
            .get(&(KIND_STRUCT, strukt.to_owned()))
            .ok_or_else(|| BtfError::NotFound {
                path: self.path.clone(),
                kind: "struct",
                name: strukt.to_owned(),
            })?;
        for &id in ids {
            let t = self.types[id as usize];
            match self.find_member(&t, member, 0) {
                Some(Ok(bits)) => return Ok(bits / 8),
                Some(Err(())) => {
                    return Err(BtfError::Bitfield {
                        path: self.path.clone(),
                        strukt: strukt.to_owned(),
                        member: member.to_owned(),
                    });
                }
                None => {}
            }
        }
        Err(BtfError::NoMember {
            path: self.path.clone(),
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        })
    }

    /// Bit offset of `member`, `Err(())` when it is a bitfield.
    fn find_member(&self, t: &Type, member: &str, base_bits: u32) -> Option<Result<u32, ()>> {
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.extra + 12 * i;
            let name_off = self.u32_at(m);
            let type_id = self.u32_at(m + 4);
            let raw = self.u32_at(m + 8);
            let (bit_off, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_off == 0 {
                if let Some(inner) = self.resolve(type_id)
                    && let Some(found) = self.find_member(inner, member, base_bits + bit_off)
                {
                    return Some(found);
                }
            } else if self.name(name_off) == member {
                return Some(if bitfield || bit_off % 8 != 0 {
                    Err(())
                } else {
                    Ok(base_bits + bit_off)
                });
            }
        }
        None
    }

    /// The values of `enum name` (plain or 64-bit), as (value name, value).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, BtfError> {
        let id = self
            .by_name
            .get(&(KIND_ENUM, name.to_owned()))
            .or_else(|| self.by_name.get(&(KIND_ENUM64, name.to_owned())))
            .and_then(|ids| ids.first())
            .ok_or_else(|| BtfError::NotFound {
                path: self.path.clone(),
                kind: "enum",
                name: name.to_owned(),
            })?;
        let t = self.types[*id as usize];
        let mut out = Vec::with_capacity(t.vlen as usize);
        for i in 0..t.vlen as usize {
            if t.kind == KIND_ENUM {
                let e = t.extra + 8 * i;
                out.push((
                    self.name(self.u32_at(e)).to_owned(),
                    u64::from(self.u32_at(e + 4)),
                ));
            } else {
                let e = t.extra + 12 * i;
                let value = u64::from(self.u32_at(e + 4)) | (u64::from(self.u32_at(e + 8)) << 32);
                out.push((self.name(self.u32_at(e)).to_owned(), value));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { struct { char pad[3]; short b; }; long c; }; }`
    /// plus `enum e { X = 1, Y = 7 }`.
    fn sample() -> Vec<u8> {
        let mut strings = b"\0outer\0a\0b\0c\0int\0e\0X\0Y\0".to_vec();
        let off = |s: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string present") as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[off("int", &strings), 1 << 24, 4, 32]);
        // 2: anonymous struct { short b at bit 24 } (kind_flag 0)
        push(&[0, (4 << 24) | 1, 8, off("b", &strings), 1, 24]);
        // 3: anonymous union { struct#2 at 0; long c at 0 }
        push(&[0, (5 << 24) | 2, 8, 0, 2, 0, off("c", &strings), 1, 0]);
        // 4: struct outer { int a at 0; union#3 at 64 }
        push(&[
            off("outer", &strings),
            (4 << 24) | 2,
            16,
            off("a", &strings),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: enum e { X = 1, Y = 7 }
        push(&[
            off("e", &strings),
            (6 << 24) | 2,
            4,
            off("X", &strings),
            1,
            off("Y", &strings),
            7,
        ]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn member_offsets_look_through_anonymous_members() {
        let btf = Btf::parse("test".into(), sample()).expect("valid BTF");
        assert_eq!(btf.member_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.member_offset("outer", "b").expect("b"), 8 + 3);
        assert_eq!(btf.member_offset("outer", "c").expect("c"), 8);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NotFound { .. })
        ));
    }

    #[test]
    fn enum_values_are_named() {
        let btf = Btf::parse("test".into(), sample()).expect("valid BTF");
        assert_eq!(
            btf.enum_values("e").expect("enum"),
            vec![("X".to_owned(), 1), ("Y".to_owned(), 7)]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [
            vec![],
            vec![0u8; 10],
            vec![0x9f, 0xeb, 1, 0, 255, 255, 255, 255],
        ] {
            assert!(Btf::parse("junk".into(), data).is_err());
        }
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse("junk".into(), truncated).is_err());
    }

    #[test]
    fn running_kernel_has_the_members_the_drop_program_reads() {
        // The project's machines (and any kernel the daemon supports) have BTF.
        let btf = Btf::vmlinux().expect("/sys/kernel/btf/vmlinux readable");
        for member in ["head", "network_header", "protocol", "dev"] {
            btf.member_offset("sk_buff", member).expect(member);
        }
        btf.member_offset("net_device", "ifindex").expect("ifindex");
        let reasons = btf.enum_values("skb_drop_reason").expect("drop reasons");
        assert!(
            reasons
                .iter()
                .any(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP")
        );
    }

    #[test]
    fn running_kernel_has_the_members_the_retransmit_program_reads() {
        let btf = Btf::vmlinux().expect("/sys/kernel/btf/vmlinux readable");
        for member in [
            "skc_daddr",
            "skc_rcv_saddr",
            "skc_dport",
            "skc_num",
            "skc_family",
            "skc_state",
            "skc_v6_daddr",
            "skc_v6_rcv_saddr",
            "skc_net",
        ] {
            btf.member_offset("sock_common", member).expect(member);
        }
        // The consecutive-RTO count lies past `struct sock` (an inet_connection_sock embeds it first).
        let sock_end = btf
            .member_offset("inet_connection_sock", "icsk_inet")
            .expect("icsk_inet");
        let retransmits = btf
            .member_offset("inet_connection_sock", "icsk_retransmits")
            .expect("icsk_retransmits");
        assert!(retransmits > sock_end, "{retransmits} > {sock_end}");
        btf.member_offset("tcp_sock", "snd_una").expect("snd_una");
    }
}
