//! Kernel events from many fake hosts at once, with no polling of their
//! state: one netlink socket per host namespace, subscribed to the IPv4
//! route group (`RTMGRP_IPV4_ROUTE`) or to nftables' group
//! (`NFNLGRP_NFTABLES`), read by one thread with `poll(2)`. A socket opened
//! on a thread inside a namespace stays bound to it.

use crate::dataplane::fabric::{in_ns, other};
use crate::BenchError;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// `NFNLGRP_NFTABLES` (7) as a group bit.
const NFNLGRP_NFTABLES_BIT: u32 = 1 << (7 - 1);
const RTM_NEWROUTE: u16 = 24;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM`.
const NFT_NEWSETELEM: u16 = (10 << 8) | 12;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const NLMSG_HDR: usize = 16;

/// What counts as "arrived" on a host.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A route to exactly `dst/len` added (or replaced), through `via`.
    Route {
        dst: Ipv4Addr,
        len: u8,
        via: Ipv4Addr,
    },
    /// An element holding this address added to a set of the `netmod` table.
    SetElem(Ipv4Addr),
}

pub struct Watch {
    fds: Vec<OwnedFd>,
    buf: Vec<u8>,
}

impl Watch {
    /// Route events of each namespace.
    pub fn routes(namespaces: &[PathBuf]) -> Result<Watch, BenchError> {
        Watch::open(namespaces, libc::NETLINK_ROUTE, RTMGRP_IPV4_ROUTE)
    }

    /// nftables events of each namespace.
    pub fn nftables(namespaces: &[PathBuf]) -> Result<Watch, BenchError> {
        Watch::open(namespaces, libc::NETLINK_NETFILTER, NFNLGRP_NFTABLES_BIT)
    }

    fn open(namespaces: &[PathBuf], proto: i32, groups: u32) -> Result<Watch, BenchError> {
        let mut fds = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            let fd = in_ns(ns, || open_socket(proto, groups))?;
            fds.push(fd);
        }
        Ok(Watch {
            fds,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Discards what is queued (events from before the measurement).
    pub fn drain(&mut self) -> Result<(), BenchError> {
        for i in 0..self.fds.len() {
            while self.recv(i)?.is_some() {}
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for events, and reads all that are queued:
    /// each host whose events match `target` for the first time gets the
    /// time of reading in `hits`.
    pub fn poll(
        &mut self,
        timeout_ms: i32,
        target: Target,
        hits: &mut [Option<Instant>],
    ) -> Result<(), BenchError> {
        let mut pfds: Vec<libc::pollfd> = self
            .fds
            .iter()
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(other(format!("poll: {e}")));
        }
        let now = Instant::now();
        for (i, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            while let Some(len) = self.recv(i)? {
                if hits[i].is_none() && matches(&self.buf[..len], target) {
                    hits[i] = Some(now);
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, i: usize) -> Result<Option<usize>, BenchError> {
        // SAFETY: the buffer is valid for its length; the fd is open.
        let n = unsafe {
            libc::recv(
                self.fds[i].as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                Some(libc::ENOBUFS) => Err(other(
                    "a netlink event socket overflowed (events lost): the measurement is void",
                )),
                _ => Err(other(format!("netlink recv: {e}"))),
            };
        }
        Ok(Some(n as usize))
    }
}

fn open_socket(proto: i32, groups: u32) -> Result<OwnedFd, BenchError> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        return Err(other(format!(
            "netlink socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a c_int value of the right size (root: FORCE).
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: addr is a valid sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(other(format!(
            "binding a netlink socket to its groups: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether any message of the datagram is what `target` waits for.
fn matches(dgram: &[u8], target: Target) -> bool {
    let mut off = 0;
    while off + NLMSG_HDR <= dgram.len() {
        let len = u32_at(dgram, off) as usize;
        if len < NLMSG_HDR || off + len > dgram.len() {
            break;
        }
        let msg = &dgram[off..off + len];
        let ty = u16_at(msg, 4);
        let hit = match target {
            Target::Route { dst, len, via } if ty == RTM_NEWROUTE => route_is(msg, dst, len, via),
            Target::SetElem(addr) if ty == NFT_NEWSETELEM => {
                let o = addr.octets();
                msg[NLMSG_HDR..].windows(4).any(|w| w == o)
                    && msg.windows(7).any(|w| w == b"netmod\0")
            }
            _ => false,
        };
        if hit {
            return true;
        }
        off += (len + 3) & !3;
    }
    false
}

fn route_is(msg: &[u8], dst: Ipv4Addr, len: u8, via: Ipv4Addr) -> bool {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let rtm = NLMSG_HDR;
    if msg.len() < rtm + 12 || msg[rtm] != libc::AF_INET as u8 || msg[rtm + 1] != len {
        return false;
    }
    let (mut got_dst, mut got_via) = (None, None);
    let mut at = rtm + 12;
    while at + 4 <= msg.len() {
        let alen = u16_at(msg, at) as usize;
        let aty = u16_at(msg, at + 2);
        if alen < 4 || at + alen > msg.len() {
            break;
        }
        let val = &msg[at + 4..at + alen];
        if val.len() == 4 {
            let a = Ipv4Addr::new(val[0], val[1], val[2], val[3]);
            match aty {
                RTA_DST => got_dst = Some(a),
                RTA_GATEWAY => got_via = Some(a),
                _ => {}
            }
        }
        at += (alen + 3) & !3;
    }
    got_dst == Some(dst) && got_via == Some(via)
}
