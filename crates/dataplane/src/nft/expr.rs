//! Rendering `model::nft` rules into nf_tables expressions.
//!
//! Each `Match` lowers to a short list of [`Expr`] (what `nft --debug=netlink`
//! prints for the same rule), and each `Expr` encodes itself. Everything
//! loads into register 1 and compares or looks up from there.

use crate::error::{Error, Result};
use crate::nl::Msg;
use ipnet::IpNet;
use netmod_model::nft::{Family, Match, Rule, Verdict, LIMIT_BURST};

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;
const NFT_RANGE_NEQ: u32 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;
/// NFT_LIMIT_PKTS
const NFT_LIMIT_PKTS: u32 = 0;
const NFT_FIB_RESULT_OIF: u32 = 1;
const NFTA_FIB_F_SADDR: u32 = 1 << 0;
const NFTA_FIB_F_IIF: u32 = 1 << 3;
const NFTA_FIB_F_PRESENT: u32 = 1 << 5;
/// `ct state established,related`: NF_CT_STATE_BIT(ESTABLISHED) | ...(RELATED).
const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// `ct state invalid`: NF_CT_STATE_INVALID_BIT.
const CT_INVALID: u32 = 1 << 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// Userdata TLV type nft uses for a rule's comment (NFTNL_UDATA_RULE_COMMENT).
const UDATA_RULE_COMMENT: u8 = 0;
/// nft's limit on comments (NFTNL_UDATA_COMMENT_MAXLEN, including the NUL).
const COMMENT_MAX: usize = 128;

/// Per-family facts for address matches and sets.
pub(super) struct FamilyInfo {
    pub nfproto: u8,
    /// nft datatype of the set key: TYPE_IPADDR / TYPE_IP6ADDR.
    pub key_type: u32,
    pub addr_len: u32,
    pub saddr_offset: u32,
    pub daddr_offset: u32,
}

pub(super) fn family_info(f: Family) -> FamilyInfo {
    match f {
        Family::V4 => FamilyInfo {
            nfproto: libc::NFPROTO_IPV4 as u8,
            key_type: 7,
            addr_len: 4,
            saddr_offset: 12,
            daddr_offset: 16,
        },
        Family::V6 => FamilyInfo {
            nfproto: libc::NFPROTO_IPV6 as u8,
            key_type: 8,
            addr_len: 16,
            saddr_offset: 8,
            daddr_offset: 24,
        },
    }
}

/// One nf_tables expression; loads write to and compares read from register 1.
#[derive(Debug, PartialEq)]
enum Expr<'a> {
    Meta { key: u32 },
    Ct { key: u32 },
    Payload { base: u32, offset: u32, len: u32 },
    Fib { flags: u32, result: u32 },
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    Cmp { op: u32, data: Vec<u8> },
    Range { op: u32, from: Vec<u8>, to: Vec<u8> },
    Lookup { set: &'a str, invert: bool },
    Limit { rate: u64, unit: u64, burst: u32 },
    Log { prefix: &'a str, group: u16 },
    Verdict { code: i32, chain: Option<&'a str> },
    Masq,
}

fn lower_match(m: &Match) -> Result<Vec<Expr<'_>>> {
    use Expr::*;
    let cmp = |op, data: &[u8]| Cmp {
        op,
        data: data.to_vec(),
    };
    Ok(match m {
        Match::IifPrefix(p) => vec![
            Meta {
                key: NFT_META_IIFNAME,
            },
            cmp(NFT_CMP_EQ, prefix(p)?),
        ],
        Match::OifPrefix(p) => vec![
            Meta {
                key: NFT_META_OIFNAME,
            },
            cmp(NFT_CMP_EQ, prefix(p)?),
        ],
        Match::CtEstablishedOrRelated => vec![
            Ct { key: NFT_CT_STATE },
            Bitwise {
                mask: CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(NFT_CMP_NEQ, &[0; 4]),
        ],
        Match::CtInvalid => vec![
            Ct { key: NFT_CT_STATE },
            Bitwise {
                mask: CT_INVALID.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(NFT_CMP_NEQ, &[0; 4]),
        ],
        Match::IcmpType { family, icmp_type } => icmp(*family, *icmp_type, None, false),
        Match::Icmp {
            family,
            icmp_type,
            code,
            negate,
        } => icmp(*family, *icmp_type, *code, *negate),
        Match::AddrNotIn {
            source,
            set,
            family,
        } => {
            let mut e = addr_in_set(*family, set, *source);
            if let Some(Lookup { invert, .. }) = e.last_mut() {
                *invert = true;
            }
            e
        }
        Match::NfProto(family) => vec![
            Meta {
                key: NFT_META_NFPROTO,
            },
            cmp(NFT_CMP_EQ, &[family_info(*family).nfproto]),
        ],
        Match::L4Proto { proto, negate } => vec![
            Meta {
                key: NFT_META_L4PROTO,
            },
            cmp(if *negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }, &[*proto]),
        ],
        Match::Port {
            source,
            first,
            last,
            negate,
        } => {
            let mut e = vec![Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: if *source { 0 } else { 2 },
                len: 2,
            }];
            let (a, b) = (first.to_be_bytes().to_vec(), last.to_be_bytes().to_vec());
            match (first == last, negate) {
                (true, false) => e.push(cmp(NFT_CMP_EQ, &a)),
                (true, true) => e.push(cmp(NFT_CMP_NEQ, &a)),
                // What nft makes of `th dport 1000-2000`.
                (false, false) => {
                    e.push(cmp(NFT_CMP_GTE, &a));
                    e.push(cmp(NFT_CMP_LTE, &b));
                }
                (false, true) => e.push(Range {
                    op: NFT_RANGE_NEQ,
                    from: a,
                    to: b,
                }),
            }
            e
        }
        Match::AddrInNet {
            source,
            net,
            negate,
        } => addr_in_net(net, *source, *negate),
        Match::Limit { per_second } => vec![Limit {
            rate: *per_second,
            unit: 1,
            burst: LIMIT_BURST,
        }],
        Match::Log { prefix, group } => {
            if prefix.len() >= 128 || prefix.contains('\0') {
                return Err(Error::invalid(
                    format!("log prefix {prefix:?}"),
                    "need at most 127 bytes and no NUL",
                ));
            }
            vec![Log {
                prefix: prefix.as_str(),
                group: *group,
            }]
        }
        Match::SourceNotRoutedViaIif => vec![
            Fib {
                flags: NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT,
                result: NFT_FIB_RESULT_OIF,
            },
            cmp(NFT_CMP_EQ, &[0; 4]),
        ],
        Match::SaddrIn { set, family } => addr_in_set(*family, set, true),
        Match::DaddrIn { set, family } => addr_in_set(*family, set, false),
        Match::TransportBits { offset, len, value } => transport_bits(*offset, *len, value)?,
    })
}

/// `@th,OFFSET,LEN VALUE`, as nft lowers it: load the bytes that hold the
/// bits; when they are not exactly those bits, mask the others off and
/// compare with the value shifted into place.
fn transport_bits(offset: u32, len: u32, value: &[u8]) -> Result<Vec<Expr<'static>>> {
    let what = || format!("match @th,{offset},{len}");
    if !(1..=128).contains(&len) {
        return Err(Error::invalid(what(), "need 1-128 bits"));
    }
    let value_bytes = len.div_ceil(8) as usize;
    let spare = value_bytes as u32 * 8 - len;
    let tail_clear = value
        .last()
        .is_some_and(|b| spare == 0 || b & ((1u8 << spare) - 1) == 0);
    if value.len() != value_bytes || !tail_clear {
        return Err(Error::invalid(
            what(),
            format!("the value must be {value_bytes} bytes with the bits past {len} zero"),
        ));
    }
    let shift = offset % 8;
    let load = (shift + len).div_ceil(8);
    if load > 16 {
        return Err(Error::invalid(what(), "spans more than 16 bytes"));
    }
    // The value and the mask, moved right by `shift` within `load` bytes.
    let place = |bits: &[u8]| -> Vec<u8> {
        let mut out = vec![0u8; load as usize];
        for (i, b) in bits.iter().enumerate() {
            let wide = u16::from(*b) << (8 - shift);
            out[i] |= (wide >> 8) as u8;
            if let Some(next) = out.get_mut(i + 1) {
                *next |= wide as u8;
            }
        }
        out
    };
    let ones: Vec<u8> = (0..value_bytes)
        .map(|i| {
            let keep = (len as usize).saturating_sub(i * 8).min(8);
            (0xffu16 << (8 - keep)) as u8
        })
        .collect();
    let mut e = vec![Expr::Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset: offset / 8,
        len: load,
    }];
    if shift != 0 || spare != 0 {
        e.push(Expr::Bitwise {
            mask: place(&ones),
            xor: vec![0; load as usize],
        });
    }
    e.push(Expr::Cmp {
        op: NFT_CMP_EQ,
        data: place(value),
    });
    Ok(e)
}

/// `icmp type T [icmp code C]`, as nft lowers it: one 2-byte compare when
/// both must equal, else one per field.
fn icmp(family: Family, icmp_type: u8, code: Option<u8>, negate: bool) -> Vec<Expr<'static>> {
    let proto = match family {
        Family::V4 => IPPROTO_ICMP,
        Family::V6 => IPPROTO_ICMPV6,
    };
    let mut e = vec![
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![family_info(family).nfproto],
        },
        Expr::Meta {
            key: NFT_META_L4PROTO,
        },
        Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![proto],
        },
    ];
    let load = |offset, len| Expr::Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        offset,
        len,
    };
    match (code, negate) {
        (None, negate) => {
            e.push(load(0, 1));
            e.push(Expr::Cmp {
                op: if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ },
                data: vec![icmp_type],
            });
        }
        (Some(c), false) => {
            e.push(load(0, 2));
            e.push(Expr::Cmp {
                op: NFT_CMP_EQ,
                data: vec![icmp_type, c],
            });
        }
        (Some(c), true) => {
            e.push(load(0, 1));
            e.push(Expr::Cmp {
                op: NFT_CMP_EQ,
                data: vec![icmp_type],
            });
            e.push(load(1, 1));
            e.push(Expr::Cmp {
                op: NFT_CMP_NEQ,
                data: vec![c],
            });
        }
    }
    e
}

/// `ip saddr 10.0.0.0/8`, as nft lowers it: a byte-aligned prefix compares
/// only its bytes; any other loads the whole address and masks it.
fn addr_in_net(net: &IpNet, source: bool, negate: bool) -> Vec<Expr<'static>> {
    let family = match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    };
    let f = family_info(family);
    let base = if source {
        f.saddr_offset
    } else {
        f.daddr_offset
    };
    let bytes = match net.network() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let bits = net.prefix_len() as usize;
    let op = if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    let mut e = vec![
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![f.nfproto],
        },
    ];
    if bits == 0 {
        // Every address of the family: the family check alone decides
        // (and "not in" it never holds). The kernel refuses a 0-byte load.
        if negate {
            e.push(Expr::Meta {
                key: NFT_META_NFPROTO,
            });
            e.push(Expr::Cmp {
                op: NFT_CMP_NEQ,
                data: vec![f.nfproto],
            });
        }
    } else if bits.is_multiple_of(8) {
        let n = bits / 8;
        e.push(Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: base,
            len: n as u32,
        });
        e.push(Expr::Cmp {
            op,
            data: bytes[..n].to_vec(),
        });
    } else {
        let mask: Vec<u8> = (0..bytes.len())
            .map(|i| {
                let keep = bits.saturating_sub(i * 8).min(8);
                (0xffu16 << (8 - keep)) as u8
            })
            .collect();
        e.push(Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: base,
            len: f.addr_len,
        });
        e.push(Expr::Bitwise {
            xor: vec![0; mask.len()],
            mask,
        });
        e.push(Expr::Cmp { op, data: bytes });
    }
    e
}

/// `iifname "nm*"` compares only the prefix bytes, without a NUL.
fn prefix(p: &str) -> Result<&[u8]> {
    if p.is_empty() || p.len() > 15 {
        return Err(Error::invalid(
            format!("interface prefix {p:?}"),
            "need 1-15 bytes",
        ));
    }
    Ok(p.as_bytes())
}

/// In an inet table: `meta nfproto == ipv4`, load the address, look it up.
fn addr_in_set(family: Family, set: &str, source: bool) -> Vec<Expr<'_>> {
    let f = family_info(family);
    let offset = if source {
        f.saddr_offset
    } else {
        f.daddr_offset
    };
    vec![
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![f.nfproto],
        },
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len: f.addr_len,
        },
        Expr::Lookup { set, invert: false },
    ]
}

fn lower_verdict(v: &Verdict) -> Option<Expr<'_>> {
    let (code, chain) = match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c.as_str())),
        Verdict::Goto(c) => (NFT_GOTO, Some(c.as_str())),
        Verdict::Continue => return None,
        Verdict::Masquerade => return Some(Expr::Masq),
    };
    Some(Expr::Verdict { code, chain })
}

impl Expr<'_> {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Payload { .. } => "payload",
            Expr::Fib { .. } => "fib",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Lookup { .. } => "lookup",
            Expr::Range { .. } => "range",
            Expr::Limit { .. } => "limit",
            Expr::Log { .. } => "log",
            Expr::Verdict { .. } => "immediate",
            Expr::Masq => "masq",
        }
    }

    /// Attribute numbers per expression are from linux/netfilter/nf_tables.h.
    fn encode_data(&self, m: &mut Msg) {
        match self {
            Expr::Meta { key } | Expr::Ct { key } => {
                m.u32_be(1, NFT_REG_1).u32_be(2, *key); // DREG, KEY
            }
            Expr::Payload { base, offset, len } => {
                m.u32_be(1, NFT_REG_1) // DREG
                    .u32_be(2, *base) // BASE
                    .u32_be(3, *offset)
                    .u32_be(4, *len);
            }
            Expr::Fib { flags, result } => {
                m.u32_be(1, NFT_REG_1).u32_be(2, *result).u32_be(3, *flags); // DREG, RESULT, FLAGS
            }
            Expr::Bitwise { mask, xor } => {
                m.u32_be(1, NFT_REG_1) // SREG
                    .u32_be(2, NFT_REG_1) // DREG
                    .u32_be(3, mask.len() as u32) // LEN
                    .nest(4, |m| value(m, mask)) // MASK
                    .nest(5, |m| value(m, xor)); // XOR
            }
            Expr::Cmp { op, data } => {
                m.u32_be(1, NFT_REG_1)
                    .u32_be(2, *op)
                    .nest(3, |m| value(m, data)); // SREG, OP, DATA
            }
            Expr::Lookup { set, invert } => {
                m.str(1, set).u32_be(2, NFT_REG_1); // SET, SREG
                if *invert {
                    m.u32_be(5, NFT_LOOKUP_F_INV); // FLAGS
                }
            }
            Expr::Range { op, from, to } => {
                m.u32_be(1, NFT_REG_1) // SREG
                    .u32_be(2, *op)
                    .nest(3, |m| value(m, from)) // FROM_DATA
                    .nest(4, |m| value(m, to)); // TO_DATA
            }
            Expr::Limit { rate, unit, burst } => {
                m.attr(1, &rate.to_be_bytes()) // RATE
                    .attr(2, &unit.to_be_bytes()) // UNIT
                    .u32_be(3, *burst) // BURST
                    .u32_be(4, NFT_LIMIT_PKTS) // TYPE
                    .u32_be(5, 0); // FLAGS
            }
            Expr::Log { prefix, group } => {
                m.attr(1, &group.to_be_bytes()); // GROUP
                if !prefix.is_empty() {
                    m.str(2, prefix); // PREFIX
                }
            }
            // nft's `masquerade` without options: no attributes.
            Expr::Masq => {}
            Expr::Verdict { code, chain } => {
                m.u32_be(1, NFT_REG_VERDICT).nest(2, |m| {
                    m.nest(NFTA_DATA_VERDICT, |m| {
                        m.u32_be(NFTA_VERDICT_CODE, *code as u32);
                        if let Some(c) = chain {
                            m.str(NFTA_VERDICT_CHAIN, c);
                        }
                    });
                });
            }
        }
    }
}

fn value(m: &mut Msg, data: &[u8]) {
    m.attr(NFTA_DATA_VALUE, data);
}

/// Writes a rule's expression list (NFTA_RULE_EXPRESSIONS body).
pub(super) fn encode_rule(m: &mut Msg, rule: &Rule) -> Result<()> {
    let mut exprs = Vec::new();
    // Like nft, check the family once per rule: a second `meta nfproto ==`
    // of the same family adds nothing.
    let mut family_known: Option<Vec<u8>> = None;
    for mat in &rule.matches {
        let mut lowered = lower_match(mat)?;
        if let [Expr::Meta {
            key: NFT_META_NFPROTO,
        }, Expr::Cmp {
            op: NFT_CMP_EQ,
            data,
        }, ..] = lowered.as_slice()
        {
            if family_known.as_ref() == Some(data) {
                lowered.drain(..2);
            } else {
                family_known = Some(data.clone());
            }
        }
        exprs.extend(lowered);
    }
    exprs.extend(lower_verdict(&rule.verdict));
    for e in &exprs {
        m.nest(NFTA_LIST_ELEM, |m| {
            m.str(NFTA_EXPR_NAME, e.name())
                .nest(NFTA_EXPR_DATA, |m| e.encode_data(m));
        });
    }
    Ok(())
}

/// The rule's userdata: a comment TLV, as nft writes it (NUL included).
pub(super) fn comment_udata(comment: &str) -> Result<Option<Vec<u8>>> {
    if comment.is_empty() {
        return Ok(None);
    }
    if comment.len() >= COMMENT_MAX || comment.contains('\0') {
        return Err(Error::invalid(
            format!("rule comment {comment:?}"),
            format!("need at most {} bytes and no NUL", COMMENT_MAX - 1),
        ));
    }
    let mut tlv = vec![UDATA_RULE_COMMENT, comment.len() as u8 + 1];
    tlv.extend_from_slice(comment.as_bytes());
    tlv.push(0);
    Ok(Some(tlv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_match_checks_nfproto_before_the_payload() {
        let m = Match::DaddrIn {
            set: "g_x_v6".into(),
            family: Family::V6,
        };
        assert_eq!(
            lower_match(&m).unwrap(),
            vec![
                Expr::Meta {
                    key: NFT_META_NFPROTO
                },
                Expr::Cmp {
                    op: NFT_CMP_EQ,
                    data: vec![10]
                },
                Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 24,
                    len: 16
                },
                Expr::Lookup {
                    set: "g_x_v6",
                    invert: false
                },
            ]
        );
    }

    #[test]
    fn prefix_match_compares_only_the_prefix() {
        let m = Match::IifPrefix("nm".into());
        let e = lower_match(&m).unwrap();
        assert_eq!(
            e[1],
            Expr::Cmp {
                op: NFT_CMP_EQ,
                data: b"nm".to_vec()
            }
        );
        assert!(lower_match(&Match::OifPrefix(String::new())).is_err());
    }

    #[test]
    fn comment_is_a_nul_terminated_tlv() {
        assert_eq!(
            comment_udata("ab").unwrap(),
            Some(vec![0, 3, b'a', b'b', 0])
        );
        assert_eq!(comment_udata("").unwrap(), None);
        assert!(comment_udata(&"x".repeat(200)).is_err());
    }
}
