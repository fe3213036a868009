//! Lists of networks from configuration, for "is this client one of ours?".

use ipnet::IpNet;
use std::net::IpAddr;

/// A set of networks (CIDRs); a bare address means just that address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpNet>);

/// A configuration entry that is neither a CIDR nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworksError(
    /// The entry, as written in the configuration.
    pub String,
);

impl std::fmt::Display for NetworksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not a network (CIDR) or an IP address", self.0)
    }
}

impl std::error::Error for NetworksError {}

impl Networks {
    /// Parses entries such as `10.0.0.0/8`, `2001:db8::/32` or `192.0.2.7`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Networks, NetworksError> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| NetworksError(entry.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Networks)
    }

    /// Is `ip` inside one of the networks? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// No networks at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let n = Networks::parse(&["127.0.0.0/8", "::1", "192.0.2.7"]).unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(n.contains("::1".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!n.contains("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn names_the_bad_entry() {
        let e = Networks::parse(&["10.0.0.0/8", "10.0.0.0/33"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`10.0.0.0/33` is not a network (CIDR) or an IP address"
        );
    }
}
