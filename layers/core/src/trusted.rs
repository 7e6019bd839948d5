//! [`TrustedProxies`]: the peers whose forwarding headers are believed.

use std::net::IpAddr;

use ipnet::IpNet;

/// Networks of trusted proxies (load balancers, CDNs in front of Snakeway), split by address
/// family so a lookup only walks the networks of the address's own family.
///
/// Used by the proxy (a listener's `trusted_proxies`: whose `x-forwarded-*` headers are kept) and
/// by the identity device (whose `x-forwarded-for` entries are walked past).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    v4: Box<[IpNet]>,
    v6: Box<[IpNet]>,
}

// === impl TrustedProxies ===

impl TrustedProxies {
    /// Trusts addresses inside any of `nets`. A host address with a prefix (`10.1.2.3/8`) means
    /// its network (`10.0.0.0/8`).
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nets
            .into_iter()
            .map(|n| n.trunc())
            .partition(|n| n.addr().is_ipv4());
        Self {
            v4: v4.into(),
            v6: v6.into(),
        }
    }

    /// Whether no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is inside a trusted network. An IPv4-mapped IPv6 address is checked as the
    /// IPv4 address it maps.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let nets = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        nets.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_truncated_split_by_family_and_mapped_addresses_match() {
        let trusted = TrustedProxies::new([
            "10.1.2.3/8".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ]);
        assert!(trusted.contains("10.200.0.1".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("2001:db8::1".parse().unwrap()));
        assert!(!trusted.contains("11.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("::a00:1".parse().unwrap()));
        assert!(!TrustedProxies::default().contains("10.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::default().is_empty() && !trusted.is_empty());
    }
}
