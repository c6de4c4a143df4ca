//! nftables through netlink: the one table `inet netmod`, replaced whole or
//! changed incrementally, each as ONE transaction (a batch the kernel commits
//! or rejects as a whole, so a failure leaves the previous rules in force).

mod expr;

use crate::error::{Context, Error, Result};
use crate::nl::{self, Ack, Msg, Socket, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use expr::{comment_udata, encode_rule, family_info, NFTA_DATA_VALUE};
use netmod_model::nft::{ChainDef, Change, Family, HookKind, Rule, Ruleset, SetDef, TABLE};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
/// Deletes elements, succeeding for missing ones (kernel >= 6.3).
const NFT_MSG_DESTROYSETELEM: u16 = 30;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;

const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Elements per NEWSETELEM message: the element list is one attribute, whose
/// length is 16 bits (2048 IPv6 elements are 57 KiB).
const ELEMS_PER_MSG: usize = 2048;
/// Batches above this size get bigger socket buffers.
const BIG_BATCH: usize = 128 * 1024;
/// What one ack costs the receive buffer (skb overhead included), generously.
const ACK_TRUESIZE: usize = 2048;

fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

fn nft_msg(ty: u16, flags: u16) -> Msg {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | ty;
    Msg::new(ty, flags, &nfgenmsg(NFPROTO_INET, 0)).flag_nests()
}

/// One message of a batch and what to call it if the kernel refuses it.
struct Entry {
    msg: Msg,
    what: String,
    /// A create-exclusive set: EEXIST means `Error::AlreadyExists`.
    exclusive_set: Option<String>,
}

/// The messages of one transaction, in order.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    /// Sets created in this batch, by name, with their transaction ids.
    new_sets: HashMap<String, u32>,
}

impl Batch {
    fn push(&mut self, msg: Msg, what: String) {
        self.entries.push(Entry {
            msg,
            what,
            exclusive_set: None,
        });
    }

    fn table(&mut self, ty: u16, flags: u16, what: &str) {
        let mut m = nft_msg(ty, flags);
        m.str(NFTA_TABLE_NAME, TABLE);
        self.push(m, format!("{what} inet {TABLE}"));
    }

    fn set(&mut self, set: &SetDef, exclusive: bool) -> Result<()> {
        check_name("set", &set.name)?;
        let f = family_info(set.family);
        let id = self.entries.len() as u32 + 1; // unique within the batch
        let mut m = nft_msg(
            NFT_MSG_NEWSET,
            NLM_F_CREATE | if exclusive { NLM_F_EXCL } else { 0 },
        );
        m.str(NFTA_SET_TABLE, TABLE)
            .str(NFTA_SET_NAME, &set.name)
            .u32_be(NFTA_SET_FLAGS, 0)
            .u32_be(NFTA_SET_KEY_TYPE, f.key_type)
            .u32_be(NFTA_SET_KEY_LEN, f.addr_len)
            .u32_be(NFTA_SET_ID, id);
        self.new_sets.insert(set.name.clone(), id);
        self.entries.push(Entry {
            msg: m,
            what: format!("create set {}", set.name),
            exclusive_set: exclusive.then(|| set.name.clone()),
        });
        let elems: Vec<IpAddr> = set.elements.iter().copied().collect();
        self.elements(NFT_MSG_NEWSETELEM, &set.name, set.family, &elems)
    }

    /// Adds (NEWSETELEM, idempotent) or removes (DESTROYSETELEM, missing is
    /// fine) elements, split over as many messages as needed.
    fn elements(&mut self, ty: u16, set: &str, family: Family, elems: &[IpAddr]) -> Result<()> {
        check_name("set", set)?;
        if let Some(bad) = elems.iter().find(|a| Family::of(a) != family) {
            return Err(Error::invalid(
                format!("element {bad} of set {set}"),
                format!("set holds {} addresses", family.suffix()),
            ));
        }
        let (flags, verb) = match ty {
            NFT_MSG_NEWSETELEM => (NLM_F_CREATE, "add"),
            _ => (0, "delete"),
        };
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let mut m = nft_msg(ty, flags);
            m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
                .str(NFTA_SET_ELEM_LIST_SET, set);
            if let Some(id) = self.new_sets.get(set) {
                m.u32_be(NFTA_SET_ELEM_LIST_SET_ID, *id);
            }
            m.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                for addr in chunk {
                    m.nest(NFTA_LIST_ELEM, |m| {
                        m.nest(NFTA_SET_ELEM_KEY, |m| {
                            m.attr(NFTA_DATA_VALUE, &addr_bytes(addr));
                        });
                    });
                }
            });
            self.push(m, format!("{verb} {} elements of set {set}", chunk.len()));
        }
        Ok(())
    }

    fn chain(&mut self, chain: &ChainDef) -> Result<()> {
        check_name("chain", &chain.name)?;
        let mut m = nft_msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
        m.str(NFTA_CHAIN_TABLE, TABLE)
            .str(NFTA_CHAIN_NAME, &chain.name);
        if let Some(hook) = &chain.hook {
            let hooknum = match hook.kind {
                HookKind::Forward => NF_INET_FORWARD,
                HookKind::Input => NF_INET_LOCAL_IN,
                HookKind::Postrouting => NF_INET_POST_ROUTING,
            };
            m.nest(NFTA_CHAIN_HOOK, |m| {
                m.u32_be(NFTA_HOOK_HOOKNUM, hooknum)
                    .u32_be(NFTA_HOOK_PRIORITY, hook.priority as u32);
            })
            .u32_be(
                NFTA_CHAIN_POLICY,
                if hook.accept_by_default {
                    NF_ACCEPT
                } else {
                    NF_DROP
                },
            )
            .str(NFTA_CHAIN_TYPE, hook.kind.chain_type());
        }
        self.push(m, format!("add chain {}", chain.name));
        Ok(())
    }

    /// Deletes every rule of a chain (DELRULE naming only the chain).
    fn flush_chain(&mut self, chain: &str) -> Result<()> {
        check_name("chain", chain)?;
        let mut m = nft_msg(NFT_MSG_DELRULE, 0);
        m.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, chain);
        self.push(m, format!("flush chain {chain}"));
        Ok(())
    }

    fn delete_chain(&mut self, chain: &str) -> Result<()> {
        check_name("chain", chain)?;
        let mut m = nft_msg(NFT_MSG_DELCHAIN, 0);
        m.str(NFTA_CHAIN_TABLE, TABLE).str(NFTA_CHAIN_NAME, chain);
        self.push(m, format!("delete chain {chain}"));
        Ok(())
    }

    fn delete_set(&mut self, set: &str) -> Result<()> {
        check_name("set", set)?;
        let mut m = nft_msg(NFT_MSG_DELSET, 0);
        m.str(NFTA_SET_TABLE, TABLE).str(NFTA_SET_NAME, set);
        self.push(m, format!("delete set {set}"));
        Ok(())
    }

    fn rule(&mut self, chain: &str, rule: &Rule) -> Result<()> {
        check_name("chain", chain)?;
        let what = format!("rule \"{rule}\" in chain {chain}");
        let udata = comment_udata(&rule.comment)?;
        let mut m = nft_msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        m.str(NFTA_RULE_TABLE, TABLE).str(NFTA_RULE_CHAIN, chain);
        let mut encoded = Ok(());
        m.nest(NFTA_RULE_EXPRESSIONS, |m| encoded = encode_rule(m, rule));
        encoded.with_context(|| what.clone())?;
        if let Some(u) = udata {
            m.attr(NFTA_RULE_USERDATA, &u);
        }
        self.push(m, what);
        Ok(())
    }

    /// Sends the whole batch in one datagram and checks every ack.
    fn commit(self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let size: usize = self.entries.iter().map(|e| e.msg.len()).sum();
        let mut msgs = Vec::with_capacity(self.entries.len() + 2);
        let mut whats = Vec::with_capacity(self.entries.len());
        msgs.push(batch_marker(NFNL_MSG_BATCH_BEGIN));
        for e in self.entries {
            let mut msg = e.msg;
            msg.add_ack();
            msgs.push(msg);
            whats.push((e.what, e.exclusive_set));
        }
        msgs.push(batch_marker(NFNL_MSG_BATCH_END));
        // Every message is acked, and each ack occupies far more of the
        // receive buffer than its few bytes: size the buffers for both.
        let needed = size.max(msgs.len() * ACK_TRUESIZE);
        let (seqs, acks) = with_socket(|sock| {
            if needed > BIG_BATCH {
                sock.grow_buffers(needed + 64 * 1024);
            }
            let seqs = sock.send(&mut msgs)?;
            Ok((seqs, sock.drain_acks()?))
        })?;
        check_acks(&seqs, &acks, &whats)
    }
}

/// The first refusal in batch order decides the error; position 0 is the
/// BEGIN marker, where the kernel reports a failed commit.
fn check_acks(seqs: &[u32], acks: &[Ack], whats: &[(String, Option<String>)]) -> Result<()> {
    let mut first: Option<(usize, (i32, Option<String>))> = None;
    let mut oks = 0;
    for ack in acks {
        let Some(i) = seqs.iter().position(|s| *s == ack.seq) else {
            continue; // left over from an earlier request on this socket
        };
        match &ack.result {
            Ok(()) => oks += 1,
            Err(e) if first.as_ref().is_none_or(|(j, _)| i < *j) => first = Some((i, e.clone())),
            Err(_) => {}
        }
    }
    if let Some((i, (errno, msg))) = first {
        let (what, exclusive_set) = match i {
            0 => ("commit".to_string(), None),
            i => whats[i - 1].clone(),
        };
        return match exclusive_set {
            Some(set) if errno == libc::EEXIST => Err(Error::AlreadyExists {
                what: format!("set {set}"),
            }),
            _ => Err(nl::kernel_error(&what, errno, msg)),
        };
    }
    if oks < whats.len() {
        return Err(Error::invalid(
            "nftables transaction",
            format!("kernel acknowledged {oks} of {} messages", whats.len()),
        ));
    }
    Ok(())
}

thread_local! {
    /// This thread's netfilter socket and the namespace it belongs to.
    static SOCKET: RefCell<Option<((u64, u64), Socket)>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's netfilter socket for its current namespace.
///
/// The socket is kept for the next call because closing one is slow after a
/// deleting transaction: the kernel's release hook waits for the deferred
/// free of that transaction (an RCU grace period, 5-15 ms here). Kept only
/// after success, so a socket in an unknown state is never reused.
fn with_socket<T>(f: impl FnOnce(&mut Socket) -> Result<T>) -> Result<T> {
    let ns = current_netns()?;
    let cached = SOCKET.with(|c| c.borrow_mut().take());
    let mut sock = match cached {
        Some((id, sock)) if id == ns => sock,
        _ => Socket::open(libc::NETLINK_NETFILTER)?,
    };
    let result = f(&mut sock);
    if result.is_ok() {
        SOCKET.with(|c| *c.borrow_mut() = Some((ns, sock)));
    }
    result
}

/// Identity (device, inode) of the calling thread's network namespace.
fn current_netns() -> Result<(u64, u64)> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| Error::io("stat /proc/thread-self/ns/net", e))?;
    Ok((meta.dev(), meta.ino()))
}

fn batch_marker(ty: u16) -> Msg {
    Msg::new(
        ty,
        0,
        &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES),
    )
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(Error::invalid(
            format!("{kind} name {name:?}"),
            "need 1-255 bytes",
        ));
    }
    Ok(())
}

/// Replaces the whole table `inet netmod` in ONE transaction: add table
/// (no-op if present), delete it, add it again with all sets and their
/// elements, all chains, then all rules. Conntrack state is unaffected.
pub fn nft_replace_all(ruleset: &Ruleset) -> Result<()> {
    let mut b = Batch::default();
    b.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, "add table");
    b.table(NFT_MSG_DELTABLE, 0, "delete table");
    b.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, "add table");
    for set in ruleset.sets.values() {
        b.set(set, false)?;
    }
    for chain in &ruleset.chains {
        b.chain(chain)?;
    }
    for chain in &ruleset.chains {
        for rule in &chain.rules {
            b.rule(&chain.name, rule)?;
        }
    }
    b.commit().context("replace nftables table")
}

/// Applies all changes in ONE transaction. `CreateSet` is create-exclusive:
/// if the set exists the whole transaction is refused with
/// `Error::AlreadyExists` (unwrapped), so a caller racing another process
/// can retry without the creation. Adding present or deleting missing
/// elements succeeds.
pub fn nft_apply(changes: &[Change]) -> Result<()> {
    let mut b = Batch::default();
    for change in changes {
        match change {
            Change::CreateSet(set) => b.set(set, true)?,
            Change::AppendRule { chain, rule } => b.rule(chain, rule)?,
            Change::AddElements {
                set,
                family,
                elements,
            } => b.elements(NFT_MSG_NEWSETELEM, set, *family, elements)?,
            Change::DeleteElements {
                set,
                family,
                elements,
            } => b.elements(NFT_MSG_DESTROYSETELEM, set, *family, elements)?,
            Change::CreateChain(name) => b.chain(&ChainDef {
                name: name.clone(),
                hook: None,
                rules: Vec::new(),
            })?,
            Change::FlushChain(name) => b.flush_chain(name)?,
            Change::DeleteChain(name) => b.delete_chain(name)?,
            Change::DeleteSet(name) => b.delete_set(name)?,
        }
    }
    b.commit().map_err(|e| match e {
        e @ Error::AlreadyExists { .. } => e,
        e => Error::Step {
            step: "apply nftables changes".into(),
            source: Box::new(e),
        },
    })
}

/// Deletes the table; Ok(false) if there was none.
pub fn nft_delete_table() -> Result<bool> {
    let mut b = Batch::default();
    b.table(NFT_MSG_DELTABLE, 0, "delete table");
    match b.commit() {
        Ok(()) => Ok(true),
        Err(e) if e.os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs a GET request; Ok(false) on ENOENT.
fn exists(what: &str, msg: Msg) -> Result<bool> {
    match with_socket(|sock| sock.request(what, msg, |_, _| {})) {
        Ok(()) => Ok(true),
        Err(e) if e.os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn nft_table_exists() -> Result<bool> {
    let mut m = nft_msg(NFT_MSG_GETTABLE, 0);
    m.str(NFTA_TABLE_NAME, TABLE);
    exists("get table", m)
}

pub fn nft_set_exists(name: &str) -> Result<bool> {
    check_name("set", name)?;
    let mut m = nft_msg(NFT_MSG_GETSET, 0);
    m.str(NFTA_SET_TABLE, TABLE).str(NFTA_SET_NAME, name);
    exists(&format!("get set {name}"), m)
}

/// The names of every set in netmod's table (empty when there is no table).
pub fn nft_list_sets() -> Result<Vec<String>> {
    let mut m = nft_msg(NFT_MSG_GETSET, NLM_F_DUMP);
    m.str(NFTA_SET_TABLE, TABLE);
    let mut names = Vec::new();
    let listed = with_socket(|sock| {
        sock.request("list sets", m, |_, payload| {
            let body = payload.get(4..).unwrap_or_default();
            let in_table = nl::attr(body, NFTA_SET_TABLE).map(cstr) == Some(TABLE);
            if let (true, Some(name)) = (in_table, nl::attr(body, NFTA_SET_NAME)) {
                names.push(cstr(name).to_string());
            }
        })
    });
    match listed {
        Ok(()) => Ok(names),
        Err(e) if e.os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A NUL-terminated netlink string attribute as text.
fn cstr(b: &[u8]) -> &str {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).unwrap_or("")
}

/// How often a multi-message dump is repeated before giving up on agreement.
const DUMP_TRIES: usize = 20;

/// The elements of a set, read with a GETSETELEM dump.
///
/// A big set arrives in several messages, and the kernel resumes its hash
/// walk for each one by position; while the table is being resized (right
/// after a bulk add) that can skip elements. So a dump of more than one
/// message is repeated until two in a row agree.
pub fn nft_list_set_elements(name: &str, family: Family) -> Result<BTreeSet<IpAddr>> {
    check_name("set", name)?;
    let (mut last, messages) = dump_elements(name, family)?;
    if messages <= 1 {
        return Ok(last);
    }
    for _ in 0..DUMP_TRIES {
        let (next, _) = dump_elements(name, family)?;
        if next == last {
            return Ok(next);
        }
        last = next;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(Error::invalid(
        format!("elements of set {name}"),
        format!("{DUMP_TRIES} dumps in a row disagreed (set changing?)"),
    ))
}

/// One GETSETELEM dump: the elements and the number of messages they came in.
fn dump_elements(name: &str, family: Family) -> Result<(BTreeSet<IpAddr>, usize)> {
    let mut m = nft_msg(NFT_MSG_GETSETELEM, NLM_F_DUMP);
    m.str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .str(NFTA_SET_ELEM_LIST_SET, name);
    let (mut out, mut messages, mut bad) = (BTreeSet::new(), 0, None);
    let what = format!("list elements of set {name}");
    with_socket(|sock| {
        sock.request(&what, m, |_, payload| {
            messages += 1;
            for key in element_keys(payload.get(4..).unwrap_or_default()) {
                match parse_key(key, family) {
                    Some(a) => {
                        out.insert(a);
                    }
                    None => bad = Some(key.len()),
                }
            }
        })
    })?;
    if let Some(len) = bad {
        return Err(Error::invalid(
            format!("set {name}"),
            format!("holds {len}-byte keys, not {} addresses", family.suffix()),
        ));
    }
    Ok((out, messages))
}

/// The key bytes of every element in a NEWSETELEM message body.
fn element_keys(body: &[u8]) -> Vec<&[u8]> {
    let Some(list) = nl::attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    nl::attrs(list)
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| nl::attr(elem, NFTA_SET_ELEM_KEY))
        .filter_map(|key| nl::attr(key, NFTA_DATA_VALUE))
        .collect()
}

fn parse_key(key: &[u8], family: Family) -> Option<IpAddr> {
    match family {
        Family::V4 => Some(IpAddr::from(<[u8; 4]>::try_from(key).ok()?)),
        Family::V6 => Some(IpAddr::from(<[u8; 16]>::try_from(key).ok()?)),
    }
}
