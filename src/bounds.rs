//! Bounds on what a peer may send, and how an error quotes input back.
//!
//! Everything a peer sends that the coordinator stores or shows again (a
//! heartbeat's facts and endpoint) has a limit per field, so one node cannot
//! grow the registry until `khctl nodes` no longer fits in a gRPC message.
//! The limits live here because both sides need them: the coordinator refuses
//! a heartbeat beyond them, and the agent keeps its own report within them.
//!
//! Errors that quote an input quote it through [`echo`], so a megabyte-long
//! name gives a short error, not a megabyte-long one.

use std::fmt;
use std::net::IpAddr;

use crate::proto::Facts;

/// How many characters of an input an error quotes.
pub const ECHO_CHARS: usize = 64;

/// An input as an error quotes it: Rust-escaped in double quotes, and cut
/// after [`ECHO_CHARS`] characters with its full size, such as
/// `"aaaa…"… (1048576 bytes)`. Escaping keeps control characters in a
/// hostile input from reaching an operator's terminal.
pub struct Echo<'a>(&'a str);

/// Quotes `input` for an error message; see [`Echo`].
pub fn echo(input: &str) -> Echo<'_> {
    Echo(input)
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(ECHO_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// `text` itself when it has at most `max_chars` characters; otherwise its
/// first `max_chars` and the full size, as [`Echo`] cuts, for messages that
/// may carry input someone else quoted (serde's errors).
pub fn cut(text: String, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text,
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
    }
}

impl fmt::Debug for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A value beyond its bound. Each variant names the field (as the wire
/// spells it, such as `facts.mac_addresses[3]`) and the limit it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfBounds {
    #[error("{field} is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field} has {count} entries; the limit is {max}")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    /// `value` is already quoted through [`echo`].
    #[error("{field} {value} {why}")]
    Invalid {
        field: String,
        value: String,
        why: &'static str,
    },
}

/// Longest host name: RFC 1123's 253 characters.
pub const HOSTNAME_MAX: usize = 253;
/// Longest free-text fact (os, kernel).
pub const TEXT_MAX: usize = 256;
/// Longest short fact (arch, product_uuid).
pub const SHORT_MAX: usize = 64;
/// Longest tool or agent version string.
pub const VERSION_MAX: usize = 128;
/// Most host addresses a heartbeat may list. A host has a few; the bound
/// still leaves room for a router-like host with many.
pub const ADDRESSES_MAX: usize = 256;
/// Most MAC addresses a heartbeat may list. A busy worker has one veth per
/// pod (110 by default), so the bound is well above that.
pub const MACS_MAX: usize = 512;
/// Longest MAC address text (InfiniBand's 20 bytes as hex pairs is 59).
pub const MAC_MAX: usize = 64;
/// Longest agent endpoint: a 253-character host name, ':' and a port.
pub const ENDPOINT_MAX: usize = 261;

fn too_long(field: &str, value: &str, max: usize) -> Result<(), OutOfBounds> {
    if value.len() > max {
        return Err(OutOfBounds::TooLong {
            field: field.to_string(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn invalid(field: &str, value: &str, why: &'static str) -> OutOfBounds {
    OutOfBounds::Invalid {
        field: field.to_string(),
        value: echo(value).to_string(),
        why,
    }
}

/// A bounded line of text: at most `max` bytes and no control characters,
/// which would garble (or drive) an operator's terminal in `khctl nodes`.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), OutOfBounds> {
    too_long(field, value, max)?;
    if value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            value,
            "contains control characters; send plain text",
        ));
    }
    Ok(())
}

/// A host name as RFC 1123 allows it (letters in either case, digits, '-',
/// dot-separated labels of 1-63 characters), or empty when unknown.
pub fn hostname(field: &str, value: &str) -> Result<(), OutOfBounds> {
    too_long(field, value, HOSTNAME_MAX)?;
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !value.is_empty() && !value.split('.').all(label_ok) {
        return Err(invalid(
            field,
            value,
            "is not an RFC 1123 host name (letters, digits and '-' in dot-separated labels of 1-63 characters)",
        ));
    }
    Ok(())
}

/// `host:port` where the agent serves: an IP address (IPv6 in brackets) or
/// an RFC 1123 DNS name, and a port 1-65535.
pub fn endpoint(field: &str, value: &str) -> Result<(), OutOfBounds> {
    too_long(field, value, ENDPOINT_MAX)?;
    crate::spec::Endpoint::parse(value).map_err(|_| {
        invalid(
            field,
            value,
            "is not host:port with an IP address (IPv6 in brackets) or a DNS name and a port 1-65535",
        )
    })?;
    Ok(())
}

fn mac(field: &str, value: &str) -> Result<(), OutOfBounds> {
    too_long(field, value, MAC_MAX)?;
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'-')
    {
        return Err(invalid(
            field,
            value,
            "is not a MAC address (hex digits separated by ':')",
        ));
    }
    Ok(())
}

fn list<'a>(
    field: &'a str,
    values: &'a [String],
    max: usize,
) -> Result<impl Iterator<Item = (String, &'a String)>, OutOfBounds> {
    if values.len() > max {
        return Err(OutOfBounds::TooMany {
            field: field.to_string(),
            count: values.len(),
            max,
        });
    }
    Ok(values
        .iter()
        .enumerate()
        .map(move |(i, v)| (format!("{field}[{i}]"), v)))
}

/// Checks every field of reported facts against its bound.
pub fn facts(f: &Facts) -> Result<(), OutOfBounds> {
    hostname("facts.hostname", &f.hostname)?;
    for (field, a) in list("facts.addresses", &f.addresses, ADDRESSES_MAX)? {
        too_long(&field, a, SHORT_MAX)?;
        if a.parse::<IpAddr>().is_err() {
            return Err(invalid(&field, a, "is not an IP address"));
        }
    }
    text("facts.os", &f.os, TEXT_MAX)?;
    text("facts.kernel", &f.kernel, TEXT_MAX)?;
    text("facts.arch", &f.arch, SHORT_MAX)?;
    text("facts.product_uuid", &f.product_uuid, SHORT_MAX)?;
    for (field, m) in list("facts.mac_addresses", &f.mac_addresses, MACS_MAX)? {
        mac(&field, m)?;
    }
    for (field, v) in [
        ("facts.containerd_version", &f.containerd_version),
        ("facts.kubeadm_version", &f.kubeadm_version),
        ("facts.kubelet_version", &f.kubelet_version),
        ("facts.kubectl_version", &f.kubectl_version),
        ("facts.package_manager", &f.package_manager),
    ] {
        text(field, v, VERSION_MAX)?;
    }
    Ok(())
}

/// Keeps an agent's own facts within [`facts`]' bounds, so an odd host (a
/// hostname the kernel allows but RFC 1123 does not, more interfaces than
/// the bound) still reports, with what does not fit left out rather than
/// refused whole. A value that cannot be kept is reported empty, as facts
/// report anything unreadable.
pub fn clamp_facts(f: &mut Facts) {
    if hostname("facts.hostname", &f.hostname).is_err() {
        f.hostname.clear();
    }
    f.addresses
        .retain(|a| a.len() <= SHORT_MAX && a.parse::<IpAddr>().is_ok());
    f.addresses.truncate(ADDRESSES_MAX);
    f.mac_addresses
        .retain(|m| mac("facts.mac_addresses", m).is_ok());
    f.mac_addresses.truncate(MACS_MAX);
    for (v, max) in [
        (&mut f.os, TEXT_MAX),
        (&mut f.kernel, TEXT_MAX),
        (&mut f.arch, SHORT_MAX),
        (&mut f.product_uuid, SHORT_MAX),
        (&mut f.containerd_version, VERSION_MAX),
        (&mut f.kubeadm_version, VERSION_MAX),
        (&mut f.kubelet_version, VERSION_MAX),
        (&mut f.kubectl_version, VERSION_MAX),
        (&mut f.package_manager, VERSION_MAX),
    ] {
        if text("facts", v, max).is_err() {
            v.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_short_input_whole_and_cuts_long_input() {
        assert_eq!(echo("cp-1").to_string(), "\"cp-1\"");
        assert_eq!(echo("a\u{1b}[2J").to_string(), "\"a\\u{1b}[2J\"");
        let long = "x".repeat(1 << 20);
        let quoted = echo(&long).to_string();
        assert_eq!(
            quoted,
            format!("\"{}\"… (1048576 bytes)", "x".repeat(ECHO_CHARS))
        );
        // Cut on a character boundary, counted in characters.
        let wide = "é".repeat(100);
        assert_eq!(
            echo(&wide).to_string(),
            format!("\"{}\"… (200 bytes)", "é".repeat(ECHO_CHARS))
        );
        let exact = "y".repeat(ECHO_CHARS);
        assert_eq!(echo(&exact).to_string(), format!("\"{exact}\""));
    }

    fn ok_facts() -> Facts {
        Facts {
            hostname: "cp-1.example".into(),
            addresses: vec!["10.0.0.11".into(), "fd00::11".into()],
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-18-amd64".into(),
            arch: "x86_64".into(),
            product_uuid: "4c4c4544-0042-3510-8052-b7c04f4e3732".into(),
            mac_addresses: vec!["02:42:ac:11:00:02".into()],
            containerd_version: "1.7.24".into(),
            kubeadm_version: "v1.32.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn real_facts_are_within_bounds() {
        assert_eq!(facts(&ok_facts()), Ok(()));
        assert_eq!(facts(&Facts::default()), Ok(()), "unknown facts are empty");
    }

    #[test]
    fn each_bound_names_its_field_and_limit() {
        type Spoil = Box<dyn Fn(&mut Facts)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (
                Box::new(|f| f.os = "o".repeat(4 << 20)),
                "facts.os is 4194304 bytes long; the limit is 256 bytes",
            ),
            (
                Box::new(|f| f.hostname = "h".repeat(254)),
                "facts.hostname is 254 bytes long; the limit is 253 bytes",
            ),
            (
                Box::new(|f| f.hostname = "cp_1".into()),
                "facts.hostname \"cp_1\" is not an RFC 1123 host name",
            ),
            (
                Box::new(|f| f.mac_addresses = vec!["02:00:00:00:00:01".into(); 513]),
                "facts.mac_addresses has 513 entries; the limit is 512",
            ),
            (
                Box::new(|f| f.mac_addresses.push("not a mac".into())),
                "facts.mac_addresses[1] \"not a mac\" is not a MAC address",
            ),
            (
                Box::new(|f| f.addresses = vec!["10.0.0.1".into(); 257]),
                "facts.addresses has 257 entries; the limit is 256",
            ),
            (
                Box::new(|f| f.addresses.push("10.0.0.300".into())),
                "facts.addresses[2] \"10.0.0.300\" is not an IP address",
            ),
            (
                Box::new(|f| f.kernel = "6.1\n\u{1b}[31m".into()),
                "facts.kernel \"6.1\\n\\u{1b}[31m\" contains control characters",
            ),
            (
                Box::new(|f| f.kubelet_version = "v".repeat(129)),
                "facts.kubelet_version is 129 bytes long; the limit is 128 bytes",
            ),
        ];
        for (spoil, want) in cases {
            let mut f = ok_facts();
            spoil(&mut f);
            let err = facts(&f).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
            assert!(err.len() < 300, "{err}");
        }
    }

    #[test]
    fn endpoints_are_host_and_port() {
        for ok in ["127.0.0.11:7444", "[fd00::1]:7444", "cp-1.example:7444"] {
            assert_eq!(endpoint("endpoint", ok), Ok(()), "{ok}");
        }
        for bad in ["", "cp-1", "cp-1:0", "cp-1:99999", "a b:1", "fd00::1:7444"] {
            let err = endpoint("endpoint", bad).unwrap_err().to_string();
            assert!(err.starts_with("endpoint \""), "{err}");
            assert!(err.contains("is not host:port"), "{err}");
        }
        let long = format!("{}:7444", "a".repeat(300));
        assert_eq!(
            endpoint("endpoint", &long).unwrap_err().to_string(),
            "endpoint is 305 bytes long; the limit is 261 bytes"
        );
    }

    #[test]
    fn an_agent_clamps_its_own_facts_into_bounds() {
        let mut f = ok_facts();
        f.hostname = "under_score".into();
        f.os = "o".repeat(300);
        f.mac_addresses = (0..600)
            .map(|i| format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256))
            .collect();
        f.addresses.push("garbage".into());
        clamp_facts(&mut f);
        assert_eq!(facts(&f), Ok(()));
        assert_eq!(f.hostname, "");
        assert_eq!(f.os, "");
        assert_eq!(f.mac_addresses.len(), MACS_MAX);
        assert_eq!(f.addresses, vec!["10.0.0.11", "fd00::11"]);
        assert_eq!(f.kernel, "6.1.0-18-amd64", "what fits is kept");
    }
}
