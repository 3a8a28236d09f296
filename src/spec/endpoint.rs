//! Endpoints: `host:port` with an IP address or a DNS name ([`Endpoint`]).

use super::*;

/// `host:port` where host is an IP address or an RFC 1123 DNS name. IPv6
/// hosts are written `[fd00::1]:6443` and kept here without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {why}", crate::echo(input))]
pub struct InvalidEndpoint {
    pub input: String,
    pub why: String,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, InvalidEndpoint> {
        let bad = |why: &str| InvalidEndpoint {
            input: text.to_string(),
            why: why.to_string(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("'[' is never closed"))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| bad("only an IPv6 address may stand in brackets"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("the port is missing"))?;
            (ip.to_string(), port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(bad("the port is missing"));
            };
            if host.contains(':') {
                return Err(bad("IPv6 addresses need brackets"));
            }
            if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
                return Err(bad(&format!(
                    "host {} is neither an IP address nor an RFC 1123 DNS name",
                    crate::echo(host)
                )));
            }
            (host.to_string(), port)
        };
        // u16's parser accepts a leading '+', which no endpoint should have.
        let port = Some(port)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("port must be a number 1-65535"))?;
        Ok(Endpoint { host, port })
    }

    /// The host as an IP address, when it is one.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for Endpoint {
    type Err = InvalidEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An RFC 1123 host name. A name made only of numeric labels is refused: it is
/// a mistyped IPv4 address (`10.0.0.256`), never a real host name.
fn is_dns_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (1..=253).contains(&s.len())
        && s.split('.').all(label_ok)
        && !s.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A DNS-1123 label, as Kubernetes requires for object names.
pub(super) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
