//! Which IP addresses a user-given URL (media URL, webhook) may reach.
//!
//! Everything that is not a public unicast address is refused: loopback, private
//! (RFC 1918, unique-local), link-local, carrier-grade NAT, unspecified, broadcast,
//! multicast, documentation and benchmarking ranges, reserved space, and the IPv6
//! forms that embed an IPv4 address (mapped, translated/SIIT, compatible, NAT64, 6to4, Teredo), which
//! are judged by the address they carry. An operator's allow-list (CIDRs from config)
//! overrides the refusal, e.g. `127.0.0.0/8` for local use and tests.

use crate::config::Cidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The decision for one address.
pub fn is_allowed(ip: IpAddr, allow: &[Cidr]) -> bool {
    allow.iter().any(|c| c.contains(ip)) || is_public(ip)
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const BLOCKED: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // carrier-grade NAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local (cloud metadata lives here)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    !BLOCKED.iter().any(|(net, p)| in_v4(ip, *net, *p))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let bits = u128::from(ip);
    let in6 = |net: u128, prefix: u32| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        bits & mask == net & mask
    };
    // Forms that carry an IPv4 address are judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if in6(0x0000_0000_0000_0000_ffff_0000_0000_0000, 96) {
        // ::ffff:0:0/96, IPv4-translated (SIIT): the IPv4 address in the low 32 bits.
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    if in6(0, 96) {
        // ::/96: unspecified, loopback, and the deprecated IPv4-compatible form.
        return bits > 1 && is_public_v4(Ipv4Addr::from(bits as u32));
    }
    if in6(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96)
        || in6(0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48)
    {
        return is_public_v4(Ipv4Addr::from(bits as u32)); // NAT64
    }
    if seg[0] == 0x2002 {
        // 6to4: the IPv4 address is in bits 16..48.
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return is_public_v4(v4);
    }
    const BLOCKED: &[(u128, u32)] = &[
        (0x0100_0000_0000_0000_0000_0000_0000_0000, 64), // discard-only
        (0x2001_0000_0000_0000_0000_0000_0000_0000, 32), // Teredo (embeds obfuscated IPv4)
        (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // documentation
        (0x2001_0010_0000_0000_0000_0000_0000_0000, 28), // ORCHID
        (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7),  // unique local
        (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // link-local
        (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), // site-local (deprecated)
        (0xff00_0000_0000_0000_0000_0000_0000_0000, 8),  // multicast
    ];
    !BLOCKED.iter().any(|(net, p)| in6(*net, *p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_non_public_form() {
        for s in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "::ffff:0:a9fe:a9fe",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn accepts_public_addresses() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn allow_list_overrides() {
        let allow = [Cidr::parse("127.0.0.0/8").unwrap()];
        assert!(is_allowed(ip("127.0.0.1"), &allow));
        assert!(is_allowed(ip("::ffff:127.0.0.1"), &allow));
        assert!(!is_allowed(ip("10.0.0.1"), &allow));
        assert!(!is_allowed(ip("::1"), &allow));
    }
}
