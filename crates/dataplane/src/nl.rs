//! Minimal netlink: a socket that sends requests (or one batch) and collects
//! the kernel's answers, and the small message codec nf_tables uses.
//!
//! The socket serves both rtnetlink and nf_tables. rtnetlink messages come
//! encoded from `netlink-packet-route` (see `rtnl`); nf_tables has no such
//! crate that covers what we use, so `Msg` and the attribute readers build
//! and read its plain TLV messages here.

use crate::error::{Error, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLM_F_DUMP: u16 = 0x300;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(3 << 14);
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const HDR_LEN: usize = 16;
const RECV_BUF: usize = 128 * 1024;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction: header, family header, attributes.
pub(crate) struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
    nested_flag: u16,
    /// Set when an attribute outgrew its 16-bit length; reported at send time.
    too_long: bool,
}

impl Msg {
    /// `fixed` is the family header (ifinfomsg, rtmsg, nfgenmsg...) as bytes.
    pub fn new(ty: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = vec![0u8; HDR_LEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Msg {
            buf,
            nests: Vec::new(),
            nested_flag: 0,
            too_long: false,
        }
    }

    /// Mark nests with NLA_F_NESTED (nftables does, rtnetlink tools do not).
    pub fn flag_nests(mut self) -> Msg {
        self.nested_flag = NLA_F_NESTED;
        self
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Ask the kernel to acknowledge this message.
    pub fn add_ack(&mut self) {
        let flags = u16::from_ne_bytes([self.buf[6], self.buf[7]]) | NLM_F_ACK;
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.too_long |= len > u16::MAX as usize;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// nftables integers travel in network byte order.
    pub fn u32_be(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_be_bytes())
    }

    pub fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Msg)) -> &mut Msg {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | self.nested_flag).to_ne_bytes());
        self.nests.push(start);
        body(self);
        let start = self.nests.pop().expect("balanced nests");
        let len = self.buf.len() - start;
        self.too_long |= len > u16::MAX as usize;
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self
    }

    /// A nested attribute whose body is already encoded (e.g. copied from a
    /// message the kernel sent).
    pub fn nested_raw(&mut self, ty: u16, body: &[u8]) -> &mut Msg {
        self.nest(ty, |m| {
            m.buf.extend_from_slice(body);
            m.buf.resize(align4(m.buf.len()), 0);
        })
    }

    /// Fills in length and sequence number; returns the wire bytes.
    fn finish(&mut self, seq: u32) -> Result<&[u8]> {
        if self.too_long {
            return Err(Error::invalid(
                "netlink message",
                "an attribute exceeds 64 KiB",
            ));
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(&self.buf)
    }
}

/// Iterates the attributes of a message body: (type without flags, payload).
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, data))
    })
}

pub(crate) fn attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

pub(crate) fn attr_str(b: &[u8], ty: u16) -> Option<String> {
    let d = attr(b, ty)?;
    let d = d.split(|c| *c == 0).next().unwrap_or(d);
    Some(String::from_utf8_lossy(d).into_owned())
}

/// One message the kernel sent back.
pub(crate) struct Reply<'a> {
    pub ty: u16,
    pub seq: u32,
    pub payload: &'a [u8],
    flags: u16,
}

impl Reply<'_> {
    /// For NLMSG_ERROR: Ok for an ack, else the errno and the kernel's message.
    fn ack(&self) -> Option<std::result::Result<(), (i32, Option<String>)>> {
        if self.ty != NLMSG_ERROR {
            return None;
        }
        let code = i32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?);
        if code == 0 {
            return Some(Ok(()));
        }
        let mut msg = None;
        if self.flags & NLM_F_ACK_TLVS != 0 {
            let orig_len = self
                .payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize)
                .unwrap_or(HDR_LEN);
            let skip = if self.flags & NLM_F_CAPPED != 0 {
                HDR_LEN
            } else {
                align4(orig_len)
            };
            msg = self
                .payload
                .get(4 + skip..)
                .and_then(|tlvs| attr_str(tlvs, NLMSGERR_ATTR_MSG));
        }
        Some(Err((-code, msg)))
    }
}

fn replies(mut b: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    std::iter::from_fn(move || {
        if b.len() < HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        if len < HDR_LEN || len > b.len() {
            return None;
        }
        let r = Reply {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            payload: &b[HDR_LEN..len],
        };
        b = &b[align4(len).min(b.len())..];
        Some(r)
    })
}

/// The kernel's refusal of one message: errno plus its extended-ack text.
pub(crate) fn kernel_error(what: &str, errno: i32, msg: Option<String>) -> Error {
    match msg {
        Some(m) if !m.is_empty() => Error::errno(format!("{what} (kernel: {m})"), errno),
        _ => Error::errno(what, errno),
    }
}

/// Outcome of one message of a batch.
pub(crate) struct Ack {
    pub seq: u32,
    pub result: std::result::Result<(), (i32, Option<String>)>,
}

/// A netlink socket in the namespace of the thread that opened it.
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    pub fn open(protocol: libc::c_int) -> Result<Socket> {
        // SAFETY: socket(2) with constant arguments; the result is checked below
        // and then owned by exactly one OwnedFd.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(Error::last_os("open netlink socket"));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = Socket {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF],
        };
        // Both are conveniences (shorter acks, kernel error text); old kernels may refuse.
        let _ = sock.set_opt(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = sock.set_opt(libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        Ok(sock)
    }

    fn set_opt(&self, level: libc::c_int, name: libc::c_int, val: libc::c_int) -> io::Result<()> {
        // SAFETY: passes a pointer to a live c_int and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Make room for a large batch and its acks, as `nft` does: the *FORCE
    /// variants pass the system limits (needs CAP_NET_ADMIN), the plain ones
    /// are the fallback.
    pub fn grow_buffers(&self, bytes: usize) {
        let val = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if self.set_opt(libc::SOL_SOCKET, force, val).is_err() {
                let _ = self.set_opt(libc::SOL_SOCKET, plain, val);
            }
        }
    }

    /// The sequence number for the next message sent.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends all messages in ONE datagram (the kernel needs a batch whole);
    /// returns the sequence number given to each.
    pub fn send(&mut self, msgs: &mut [Msg]) -> Result<Vec<u32>> {
        let mut wire = Vec::with_capacity(msgs.iter().map(Msg::len).sum());
        let mut seqs = Vec::with_capacity(msgs.len());
        for m in msgs.iter_mut() {
            let seq = self.next_seq();
            wire.extend_from_slice(m.finish(seq)?);
            seqs.push(seq);
        }
        self.send_wire(&wire)?;
        Ok(seqs)
    }

    fn send_wire(&self, wire: &[u8]) -> Result<()> {
        // SAFETY: `wire` is a live buffer of the given length for the whole call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), wire.as_ptr().cast(), wire.len(), 0) };
        if n < 0 {
            return Err(Error::last_os("send netlink message"));
        }
        if n as usize != wire.len() {
            return Err(Error::invalid("netlink send", "short write"));
        }
        Ok(())
    }

    /// Receives one datagram; None when `nonblocking` and nothing is queued.
    fn recv(&mut self, nonblocking: bool) -> Result<Option<usize>> {
        let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: `self.buf` is a live, writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > self.buf.len() {
                    return Err(Error::invalid("netlink reply", "truncated"));
                }
                return Ok(Some(n));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if nonblocking => return Ok(None),
                _ => return Err(Error::io("receive netlink reply", err)),
            }
        }
    }

    /// Sends one request (with ACK) and reads until its ack, NLMSG_DONE (dumps)
    /// or error. Data replies go to `on_reply(type, payload)`.
    pub fn request(
        &mut self,
        what: &str,
        mut msg: Msg,
        on_reply: impl FnMut(u16, &[u8]),
    ) -> Result<()> {
        msg.add_ack();
        let seq = self.next_seq();
        let wire = msg.finish(seq)?;
        self.exchange(what, seq, wire, on_reply)
    }

    /// Like [`Socket::request`] for a message encoded elsewhere: `wire` is one
    /// whole message that asks for an ack and carries `seq` from `next_seq`.
    pub fn exchange(
        &mut self,
        what: &str,
        seq: u32,
        wire: &[u8],
        mut on_reply: impl FnMut(u16, &[u8]),
    ) -> Result<()> {
        self.send_wire(wire)?;
        loop {
            let n = self.recv(false)?.unwrap_or(0);
            for r in replies(&self.buf[..n]) {
                if r.seq != seq {
                    continue;
                }
                if let Some(ack) = r.ack() {
                    return ack.map_err(|(errno, m)| kernel_error(what, errno, m));
                }
                if r.ty == NLMSG_DONE {
                    let code = r
                        .payload
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    return match code {
                        0 => Ok(()),
                        c => Err(Error::errno(what, -c)),
                    };
                }
                on_reply(r.ty, r.payload);
            }
        }
    }

    /// Subscribe to a multicast group (e.g. NFNLGRP_NFTABLES) for events.
    pub fn join_group(&self, group: u32) -> Result<()> {
        const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
        // Bind first (the kernel picks our port id): group delivery goes to
        // bound sockets.
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: passes a pointer to a live sockaddr_nl and its exact size.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("bind netlink socket"));
        }
        self.set_opt(
            libc::SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            group as libc::c_int,
        )
        .map_err(|e| Error::io(format!("join netlink group {group}"), e))
    }

    /// Waits up to `timeout` for event messages and returns each one's type
    /// and payload (empty when none came). ENOBUFS (events lost because we
    /// were slow) is reported as one message of type 0, so that the caller
    /// treats it as "anything may have changed".
    pub fn recv_events(&mut self, timeout: std::time::Duration) -> Result<Vec<(u16, Vec<u8>)>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(Error::io("poll netlink socket", err));
        }
        let mut out = Vec::new();
        loop {
            match self.recv(true) {
                Ok(Some(n)) => {
                    out.extend(replies(&self.buf[..n]).map(|r| (r.ty, r.payload.to_vec())))
                }
                Ok(None) => return Ok(out),
                Err(e) if e.os_error() == Some(libc::ENOBUFS) => out.push((0, Vec::new())),
                Err(e) => return Err(e),
            }
        }
    }

    /// Collects every ack already queued. The kernel processes a batch inside
    /// `send`, so all its answers are queued by the time `send` returns.
    pub fn drain_acks(&mut self) -> Result<Vec<Ack>> {
        let mut acks = Vec::new();
        while let Some(n) = self.recv(true)? {
            acks.extend(
                replies(&self.buf[..n])
                    .filter_map(|r| r.ack().map(|result| Ack { seq: r.seq, result })),
            );
        }
        Ok(acks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests_and_attrs_round_trip() {
        let mut m = Msg::new(16, NLM_F_CREATE, &[0u8; 16]).flag_nests();
        m.str(3, "eth0").nest(18, |m| {
            m.str(1, "veth").u32_be(2, 7);
        });
        let wire = m.finish(9).unwrap().to_vec();
        let r = replies(&wire).next().unwrap();
        assert_eq!((r.ty, r.seq), (16, 9));
        let body = &r.payload[16..];
        assert_eq!(attr_str(body, 3).as_deref(), Some("eth0"));
        let nest = attr(body, 18).unwrap();
        assert_eq!(attr_str(nest, 1).as_deref(), Some("veth"));
        assert_eq!(attr(nest, 2), Some(&7u32.to_be_bytes()[..]));
    }

    #[test]
    fn oversized_attribute_is_refused() {
        let mut m = Msg::new(16, 0, &[]);
        m.attr(1, &vec![0u8; 70_000]);
        assert!(m.finish(1).is_err());
    }
}
