//! The host's own addresses and routes, read without netlink writes:
//! `getifaddrs(3)` and `/proc/net/{route,ipv6_route}`, both of the calling
//! thread's network namespace. `netmod pool add` refuses pools that overlap
//! them.

use ipnet::IpNet;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One route of the host's main tables, as `host_routes` reads it.
pub struct HostRoute {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    /// An unreachable/prohibit route: no traffic goes anywhere.
    pub reject: bool,
}

const RTF_GATEWAY: u32 = 0x2;
const RTF_REJECT: u32 = 0x200;

/// (interface, address) of every address of every interface.
pub fn host_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until
    // freeifaddrs, called below on every path once the list exists.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose
        // family field is always valid; the family-specific struct is
        // read only when the family says that is what it is.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        out.push((name, addr));
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

pub fn host_routes() -> std::io::Result<Vec<HostRoute>> {
    let mut out = parse_route(&std::fs::read_to_string("/proc/net/route")?);
    // A kernel without IPv6 has no ipv6_route.
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse_ipv6_route(&v6));
    }
    Ok(out)
}

/// `/proc/net/route`: the IPv4 main table. Addresses are the raw
/// network-order bytes printed as a native-endian hex number.
pub(crate) fn parse_route(text: &str) -> Vec<HostRoute> {
    let v4 = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|n| Ipv4Addr::from(n.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let (dst, gw, mask) = (v4(f[1])?, v4(f[2])?, v4(f[7])?);
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let prefix = u32::from(mask).count_ones() as u8;
            Some(HostRoute {
                dst: IpNet::new(IpAddr::V4(dst), prefix).ok()?.trunc(),
                via: (flags & RTF_GATEWAY != 0).then_some(IpAddr::V4(gw)),
                dev: (f[0] != "*").then(|| f[0].to_string()),
                reject: flags & RTF_REJECT != 0,
            })
        })
        .collect()
}

/// `/proc/net/ipv6_route`: dst, dst prefix, src, src prefix, next hop,
/// metric, refcount, use, flags, device.
pub(crate) fn parse_ipv6_route(text: &str) -> Vec<HostRoute> {
    let v6 = |hex: &str| u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from);
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let prefix = u8::from_str_radix(f[1], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            Some(HostRoute {
                dst: IpNet::new(IpAddr::V6(v6(f[0])?), prefix).ok()?.trunc(),
                via: (flags & RTF_GATEWAY != 0).then_some(IpAddr::V6(v6(f[4])?)),
                dev: Some(f[9].to_string()),
                reject: flags & RTF_REJECT != 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_route_tables_parse() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
v0\t00004E0A\t01014D0A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0
";
        let r = parse_route(v4);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r[1].dst.to_string(), "192.0.2.0/24");
        assert_eq!(r[1].via, None);
        assert_eq!(r[1].dev.as_deref(), Some("eth0"));
        assert_eq!(r[2].dst.to_string(), "10.78.0.0/16");
        assert_eq!(r[2].via, Some("10.77.1.1".parse().unwrap()));
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let r = parse_ipv6_route(v6);
        assert_eq!(r[0].dst.to_string(), "fd00::/64");
        assert_eq!(r[0].via, None);
        assert_eq!(r[1].via, Some("fd00::1".parse().unwrap()));
        assert!(r[2].reject);
    }
}
