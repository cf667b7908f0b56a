//! Value types of the configuration and the deserializers that read them, each with
//! the one-line problem an operator sees when a value is wrong.

use ipnet::IpNet;
use serde::{de::Error as _, Deserialize, Deserializer};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// An IP network, `addr/prefix` (or a bare address: a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(addr) = t.parse::<IpAddr>() {
            return Ok(Self(IpNet::from(addr)));
        }
        match t.split_once('/') {
            Some((a, _)) if a.trim().parse::<IpAddr>().is_ok() => t
                .parse::<IpNet>()
                .map(Self)
                .map_err(|_| format!("{s:?} has an invalid prefix length (0-32 or 0-128)")),
            _ => Err(format!("{s:?} is not an IP address or CIDR")),
        }
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cidr::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Parses `30s`, `5m`, `2h`, `1d` (any unit `humantime` knows) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too large"));
    }
    humantime::parse_duration(s).map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 2h"))
}

/// A whole number of seconds (`*_secs` keys).
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .map(Duration::from_secs)
        .map_err(|_| D::Error::custom(format!("{n} is negative")))
}

/// A whole number of milliseconds (`*_ms` keys).
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .map(Duration::from_millis)
        .map_err(|_| D::Error::custom(format!("{n} is negative")))
}

/// `retry_schedule`: a list of durations.
pub fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_duration(s))
        .collect::<Result<_, _>>()
        .map_err(D::Error::custom)
}

/// A TCP port, 0 meaning "any free one".
pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(d)?;
    u16::try_from(n).map_err(|_| D::Error::custom(format!("invalid port {n}: must be 0-65535")))
}

/// A list of ports a URL may use (1-65535).
pub fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    Vec::<i64>::deserialize(d)?
        .into_iter()
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| D::Error::custom(format!("{p} is not a port (1-65535)")))
        })
        .collect()
}

/// An IP address, surrounding blanks ignored.
pub fn ip<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim()
        .parse()
        .map_err(|_| D::Error::custom(format!("{s:?} is not an IP address")))
}

/// A string, surrounding blanks removed.
pub fn trimmed<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(String::deserialize(d)?.trim().to_string())
}

/// A string where blank means "not set".
pub fn blank_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then_some(s))
}

/// A directory where blank means "the default" (an empty path, resolved later).
pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(PathBuf::from(String::deserialize(d)?.trim()))
}

/// A WhatsApp Web version `2.3000.1027868186`; blank: looked up at start.
pub fn client_version<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<(u32, u32, u32)>, D::Error> {
    let Some(v) = blank_none(d)? else {
        return Ok(None);
    };
    let parts: Vec<Option<u32>> = v.split('.').map(|p| p.trim().parse().ok()).collect();
    match parts.as_slice() {
        [Some(a), Some(b), Some(c)] => Ok(Some((*a, *b, *c))),
        _ => Err(D::Error::custom(
            "must look like 2.3000.1027868186 (three numbers)",
        )),
    }
}

/// Validation rule for durations: within `min..=max` seconds.
pub fn within(min: u64, max: u64) -> impl FnOnce(&Duration, &()) -> garde::Result {
    move |d, _| {
        let s = d.as_secs();
        if (min..=max).contains(&s) {
            Ok(())
        } else {
            Err(garde::Error::new(format!(
                "{s} is out of range ({min}-{max} seconds)"
            )))
        }
    }
}

/// Validation rule: 1-4 digits (a country calling code).
pub fn country_code(cc: &str, _: &()) -> garde::Result {
    if (1..=4).contains(&cc.len()) && cc.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(garde::Error::new("must be 1-4 digits, e.g. 62"))
    }
}

/// Validation rule: a `ws://` or `wss://` URL, when set.
pub fn socket_url(u: &Option<String>, _: &()) -> garde::Result {
    match u {
        Some(u) if !(u.starts_with("ws://") || u.starts_with("wss://")) => {
            Err(garde::Error::new("must start with ws:// or wss://"))
        }
        _ => Ok(()),
    }
}
