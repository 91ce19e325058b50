//! Which webhook destinations the operator may call. Pure: the caller resolves the host and
//! connects to the very address checked here (no second lookup a DNS rebinding could change).
//!
//! Rules (`--notify-allowed-hosts`, chart `notify.allowedHosts`):
//! - An empty list allows any host name, but never a cluster-internal address (loopback,
//!   RFC 1918, link-local — which holds the cloud metadata address 169.254.169.254 —, CGNAT,
//!   unspecified, multicast, IPv6 unique-local and link-local).
//! - A non-empty list allows only the host names it names (`hooks.example.com`, or
//!   `*.example.com` for any subdomain) and the addresses in its IPs/CIDRs (`203.0.113.7`,
//!   `10.0.0.0/8`, `::1/128`).
//! - A cluster-internal address is allowed only when an IP/CIDR entry covers it: naming the host
//!   is not enough, so a public name that resolves to 169.254.169.254 is still refused.

use std::net::IpAddr;

/// One entry of the allow-list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A host name, lower case; `*.` prefix = any subdomain.
    Host(String),
    /// An address range.
    Net { addr: IpAddr, prefix: u8 },
}

/// The allow-list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    pub entries: Vec<Entry>,
}

impl AllowList {
    /// Parses a comma-separated list (spaces ignored). Errors name the bad entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            entries.push(parse_entry(raw)?);
        }
        Ok(Self { entries })
    }

    fn host_named(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|e| match e {
            Entry::Host(h) => match h.strip_prefix("*.") {
                Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
                None => *h == host,
            },
            Entry::Net { .. } => false,
        })
    }

    fn covers(&self, addr: IpAddr) -> bool {
        self.entries.iter().any(|e| matches!(e, Entry::Net { addr: net, prefix } if in_net(addr, *net, *prefix)))
    }

    /// Whether `host` resolving to `addrs` may be called: every address is checked (the caller
    /// connects to one of them). The error says why not, for `status.notifications`.
    pub fn check(&self, host: &str, addrs: &[IpAddr]) -> Result<(), String> {
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        let named = self.host_named(host);
        for addr in addrs {
            let covered = self.covers(*addr);
            if !self.entries.is_empty() && !named && !covered {
                return Err(format!("{host} ({addr}) is not in the operator's allowed hosts (notify.allowedHosts)"));
            }
            if let Some(range) = internal_range(*addr)
                && !covered
            {
                return Err(format!(
                    "{host} resolves to {addr}, a {range} address: refused unless notify.allowedHosts lists it as an IP or CIDR"
                ));
            }
        }
        Ok(())
    }
}

fn parse_entry(raw: &str) -> Result<Entry, String> {
    let bad = |why: &str| format!("notify allowed host {raw:?}: {why}");
    let (addr_text, prefix_text) = match raw.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (raw, None),
    };
    let addr_text = addr_text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(addr) = addr_text.parse::<IpAddr>() {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| bad(&format!("the prefix must be 0-{max}")))?,
            None => max,
        };
        return Ok(Entry::Net { addr, prefix });
    }
    if prefix_text.is_some() {
        return Err(bad("not an IP address before the '/'"));
    }
    let host = raw.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        return Err(bad("not a host name, an IP address or a CIDR"));
    }
    Ok(Entry::Host(host))
}

/// True when `addr` is in `net/prefix` (an IPv4-mapped IPv6 address counts as its IPv4 one).
fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(addr), canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The cluster-internal range `addr` is in, if any.
pub fn internal_range(addr: IpAddr) -> Option<&'static str> {
    const RANGES: &[(&str, u8, &str)] = &[
        ("0.0.0.0", 8, "unspecified"),
        ("10.0.0.0", 8, "private (RFC 1918)"),
        ("100.64.0.0", 10, "shared (CGNAT)"),
        ("127.0.0.0", 8, "loopback"),
        ("169.254.0.0", 16, "link-local (cloud metadata)"),
        ("172.16.0.0", 12, "private (RFC 1918)"),
        ("192.168.0.0", 16, "private (RFC 1918)"),
        ("224.0.0.0", 4, "multicast"),
        ("240.0.0.0", 4, "reserved"),
        ("::", 128, "unspecified"),
        ("::1", 128, "loopback"),
        ("fc00::", 7, "unique-local"),
        ("fe80::", 10, "link-local"),
        ("ff00::", 8, "multicast"),
    ];
    RANGES.iter().find(|(net, prefix, _)| in_net(addr, net.parse().expect("a range"), *prefix)).map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_list_allows_public_addresses_and_refuses_every_internal_range() {
        let list = AllowList::default();
        assert_eq!(list.check("hooks.example.com", &[ip("203.0.113.7")]), Ok(()));
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let error = list.check("h", &[ip(internal)]).expect_err(internal);
            assert!(error.contains(internal.trim_start_matches("::ffff:")) || error.contains(internal), "{error}");
        }
        assert_eq!(list.check("h", &[ip("172.32.0.1")]), Ok(()), "just outside 172.16/12");
    }

    #[test]
    fn every_resolved_address_is_checked() {
        let list = AllowList::default();
        let error = list.check("rebind.example.com", &[ip("203.0.113.7"), ip("169.254.169.254")]).unwrap_err();
        assert!(error.contains("169.254.169.254") && error.contains("link-local"), "{error}");
        assert!(list.check("nowhere.example.com", &[]).unwrap_err().contains("no address"));
    }

    #[test]
    fn a_list_allows_only_what_it_names_and_internal_addresses_only_by_ip_or_cidr() {
        let list = AllowList::parse("hooks.example.com, *.corp.example, 127.0.0.1, 10.20.0.0/16").unwrap();
        assert_eq!(list.check("hooks.example.com", &[ip("203.0.113.7")]), Ok(()));
        assert_eq!(list.check("HOOKS.example.com.", &[ip("203.0.113.7")]), Ok(()));
        assert_eq!(list.check("a.b.corp.example", &[ip("203.0.113.8")]), Ok(()));
        assert!(list.check("corp.example", &[ip("203.0.113.8")]).is_err(), "*. means subdomains only");
        assert!(list.check("xcorp.example", &[ip("203.0.113.8")]).is_err());
        assert!(list.check("other.example.com", &[ip("203.0.113.9")]).unwrap_err().contains("not in the operator's allowed hosts"));
        assert_eq!(list.check("127.0.0.1", &[ip("127.0.0.1")]), Ok(()), "an internal address listed as an IP");
        assert_eq!(list.check("svc.local", &[ip("10.20.3.4")]), Ok(()), "an internal address in a listed CIDR");
        assert!(list.check("svc.local", &[ip("10.21.3.4")]).is_err());
        let error = list.check("hooks.example.com", &[ip("169.254.169.254")]).unwrap_err();
        assert!(error.contains("unless notify.allowedHosts lists it as an IP or CIDR"), "naming the host does not unlock: {error}");
        assert!(list.check("127.0.0.2", &[ip("127.0.0.2")]).is_err(), "127.0.0.1 is /32");
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.0/33", "::1/129", "host/8", "bad_host", "a..b", "*."] {
            let error = AllowList::parse(&format!("ok.example, {bad}")).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert_eq!(AllowList::parse(" , ").unwrap(), AllowList::default());
        assert_eq!(AllowList::parse("[::1]").unwrap().entries, vec![Entry::Net { addr: ip("::1"), prefix: 128 }]);
    }
}
