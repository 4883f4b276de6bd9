//! Values of the "who may relay" keys: client networks, recipient domains, and the rules of
//! `[smtp.sender_policy.NAME]`. Each parses itself from the string an operator writes and prints
//! back the same way; the decisions made with them live in `smtp::policy`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::list;

/// A client network in CIDR form; a bare address means that one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub IpNet);

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.contains('/') {
            text.parse::<IpNet>()
                .map(|net| Network(net.trunc()))
                .map_err(|_| "not a network in CIDR form (like 10.0.0.0/24)".into())
        } else {
            text.parse::<IpAddr>()
                .map(|ip| Network(IpNet::from(ip)))
                .map_err(|_| "not an IP address or CIDR network".into())
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The loopback networks: the default, so only programs on this machine can relay.
pub fn loopback() -> Vec<Network> {
    vec![
        Network(IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::LOCALHOST, 8))),
        Network(IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128))),
    ]
}

/// A mail domain, kept lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(pub String);

impl FromStr for Domain {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim_start_matches('@');
        if text.is_empty()
            || text.starts_with('.')
            || text.ends_with('.')
            || text.contains("..")
            || text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "@[]<>,;".contains(c))
        {
            return Err("not a domain name".into());
        }
        Ok(Domain(text.to_lowercase()))
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a sender rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSpec {
    /// `*`: every client.
    Any,
    /// `user:NAME`: a client that authenticated as NAME.
    User(String),
    /// A network, as in `allowed_networks`.
    Network(Network),
}

impl FromStr for ClientSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "*" {
            Ok(ClientSpec::Any)
        } else if let Some(user) = text.strip_prefix("user:") {
            if user.is_empty() {
                Err("user: needs a name".into())
            } else {
                Ok(ClientSpec::User(user.to_string()))
            }
        } else {
            text.parse()
                .map(ClientSpec::Network)
                .map_err(|err| format!("{err}; or use user:NAME or *"))
        }
    }
}

impl fmt::Display for ClientSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientSpec::Any => f.write_str("*"),
            ClientSpec::User(user) => write!(f, "user:{user}"),
            ClientSpec::Network(net) => net.fmt(f),
        }
    }
}

/// Which sender addresses a rule names: an exact address, `@domain`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    Any,
    Domain(Domain),
    /// Kept lower-case; compared case-insensitively.
    Exact(String),
}

impl SenderPattern {
    pub fn matches(&self, address: &str) -> bool {
        match self {
            SenderPattern::Any => true,
            SenderPattern::Domain(domain) => address
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&domain.0)),
            SenderPattern::Exact(exact) => address.eq_ignore_ascii_case(exact),
        }
    }
}

impl FromStr for SenderPattern {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "*" {
            Ok(SenderPattern::Any)
        } else if text.starts_with('@') {
            text.parse().map(SenderPattern::Domain)
        } else {
            match text.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() => {
                    domain.parse::<Domain>()?;
                    Ok(SenderPattern::Exact(text.to_lowercase()))
                }
                _ => Err("not an address, @domain or *".into()),
            }
        }
    }
}

impl fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderPattern::Any => f.write_str("*"),
            SenderPattern::Domain(domain) => write!(f, "@{domain}"),
            SenderPattern::Exact(exact) => f.write_str(exact),
        }
    }
}

/// `[smtp.sender_policy.NAME]`: which envelope senders and From addresses some clients may use.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderRule {
    /// Clients the rule covers: networks (CIDR), `user:NAME` for an SMTP user, or `*`.
    #[serde(with = "list")]
    pub clients: Vec<ClientSpec>,
    /// Senders they may use: exact addresses, `@domain`, or `*`.
    #[serde(with = "list")]
    pub allow: Vec<SenderPattern>,
    /// Senders they may never use, whatever another rule allows (same forms).
    #[serde(with = "list")]
    pub deny: Vec<SenderPattern>,
}
