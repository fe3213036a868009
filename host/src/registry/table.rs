//! The registry as the relay consults it: an in-memory copy of the store's registrations
//! and blocks, replaced whole when the store changes, so a lookup never waits on the disk.

use ipnet::IpNet;
use std::net::IpAddr;

/// An address or network registered to relay, and who answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub network: IpNet,
    /// The admin of record (a NetID or user name).
    pub admin: String,
    /// Where confirmations and notices go.
    pub contact: String,
    pub department: String,
    pub purpose: String,
    /// Unix seconds.
    pub registered_at: u64,
    /// When a message from it was last accepted (Unix seconds); `None`: never.
    pub last_relayed_at: Option<u64>,
}

/// An address or network the postmaster cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub network: IpNet,
    pub reason: String,
    /// Unix seconds.
    pub blocked_at: u64,
}

/// Registrations and blocks, most specific first.
#[derive(Debug, Default)]
pub struct Table {
    registrations: Vec<Registration>,
    blocks: Vec<Block>,
}

impl Table {
    pub fn new(mut registrations: Vec<Registration>, mut blocks: Vec<Block>) -> Self {
        registrations.sort_by_key(|r| std::cmp::Reverse(r.network.prefix_len()));
        blocks.sort_by_key(|b| std::cmp::Reverse(b.network.prefix_len()));
        Self {
            registrations,
            blocks,
        }
    }

    // A scan rather than a prefix tree: a campus registers thousands of addresses at
    // most, and a scan of those is a few microseconds per connection.
    /// The most specific registration covering `ip`.
    pub fn registration(&self, ip: IpAddr) -> Option<&Registration> {
        let ip = ip.to_canonical();
        self.registrations.iter().find(|r| r.network.contains(&ip))
    }

    /// The most specific block covering `ip`.
    pub fn block(&self, ip: IpAddr) -> Option<&Block> {
        let ip = ip.to_canonical();
        self.blocks.iter().find(|b| b.network.contains(&ip))
    }

    pub fn registrations(&self) -> &[Registration] {
        &self.registrations
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }
}

/// A network as the postmaster wrote it: a single address without `/32` or `/128`.
pub fn display(network: &IpNet) -> String {
    if network.prefix_len() == network.max_prefix_len() {
        network.addr().to_string()
    } else {
        network.to_string()
    }
}

/// An address ("192.0.2.7") or a network ("10.20.0.0/16"). A network with host bits set
/// is refused rather than silently widened: `10.20.1.5/16` is most likely a typo.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let network = match text.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip.to_canonical()),
        Err(_) => text
            .parse::<IpNet>()
            .map_err(|_| format!("{text:?} is neither an IP address nor a network (CIDR)"))?,
    };
    // An IPv4-mapped IPv6 network is the IPv4 network it maps (the relay sees clients
    // in their IPv4 form): stored as such, or it would never match.
    let network = match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 && v6.addr().to_ipv4_mapped().is_some() => {
            let v4 = v6
                .addr()
                .to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            IpNet::V4(
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map_err(|e| format!("{text}: {e}"))?,
            )
        }
        other => other,
    };
    if network.trunc() != network {
        return Err(format!(
            "{text} has host bits set; the network is {}",
            network.trunc()
        ));
    }
    Ok(network)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(network: &str, department: &str) -> Registration {
        Registration {
            network: parse_network(network).unwrap(),
            admin: "admin".into(),
            contact: "admin@example.edu".into(),
            department: department.into(),
            purpose: "tests".into(),
            registered_at: 0,
            last_relayed_at: None,
        }
    }

    #[test]
    fn the_most_specific_entry_answers() {
        let table = Table::new(
            vec![
                registration("10.20.0.0/16", "physics"),
                registration("10.20.1.5", "chemistry"),
            ],
            vec![Block {
                network: parse_network("10.20.9.0/24").unwrap(),
                reason: "spam".into(),
                blocked_at: 0,
            }],
        );
        let department = |ip: &str| {
            table
                .registration(ip.parse().unwrap())
                .map(|r| r.department.as_str())
        };
        assert_eq!(department("10.20.1.5"), Some("chemistry"));
        assert_eq!(department("10.20.1.6"), Some("physics"));
        assert_eq!(department("::ffff:10.20.1.5"), Some("chemistry"));
        assert_eq!(department("10.21.0.1"), None);
        assert!(table.block("10.20.9.200".parse().unwrap()).is_some());
        assert!(table.block("10.20.1.5".parse().unwrap()).is_none());
    }

    #[test]
    fn networks_are_read_strictly_and_shown_as_written() {
        assert_eq!(display(&parse_network("192.0.2.7").unwrap()), "192.0.2.7");
        assert_eq!(display(&parse_network("10.0.0.0/8").unwrap()), "10.0.0.0/8");
        assert_eq!(
            display(&parse_network("2001:db8::/32").unwrap()),
            "2001:db8::/32"
        );
        assert!(
            parse_network("10.1.2.3/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(parse_network("mail.example.edu").is_err());
        assert!(parse_network("10.0.0.0/33").is_err());
        assert_eq!(
            display(&parse_network("::ffff:10.0.0.0/104").unwrap()),
            "10.0.0.0/8"
        );
        assert_eq!(
            display(&parse_network("::ffff:10.1.2.3").unwrap()),
            "10.1.2.3"
        );
    }
}
