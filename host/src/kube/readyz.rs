//! `GET /readyz` and `GET /version` on an apiserver, verified against this
//! node's cluster CA.
//!
//! A deliberately small HTTP/1.1 client over rustls: one request, `Connection:
//! close`, read to the end. Pulling in a full HTTP stack for two probes
//! would be more code to trust than this.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::host::Host;
use crate::kube::CLUSTER_CA_CERT;

/// How long one probe may take to connect, and to wait for each read.
pub const READYZ_TIMEOUT: Duration = Duration::from_secs(5);
/// `/readyz` answers with a few hundred bytes; anything beyond this is not
/// an apiserver.
const RESPONSE_LIMIT: usize = 256 * 1024;
/// How much of a failure body an error keeps.
const BODY_LIMIT: usize = 4096;

/// Probes `<url>/readyz` (`url` like `https://10.0.0.11:6443`) and returns
/// `Ok` on HTTP 200. The error says what failed: the CA file, the
/// connection, TLS verification, or the apiserver's own answer with its
/// body (which lists the failing checks).
pub fn apiserver_readyz(host: &Host, url: &str) -> Result<(), String> {
    let (status, body) = get(host, url, "/readyz")?;
    if status == 200 {
        return Ok(());
    }
    Err(format!(
        "{url}/readyz answered HTTP {status}: {}",
        body_text(&body)
    ))
}

/// The apiserver's version: `gitVersion` of `<url>/version` (which every
/// client may read), e.g. `v1.32.4`.
pub fn apiserver_version(host: &Host, url: &str) -> Result<String, String> {
    let (status, body) = get(host, url, "/version")?;
    if status != 200 {
        return Err(format!(
            "{url}/version answered HTTP {status}: {}",
            body_text(&body)
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{url}/version did not answer JSON: {e}"))?;
    json.get("gitVersion")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{url}/version has no gitVersion: {}", body_text(&body)))
}

/// A failure body as text, cut to [`BODY_LIMIT`].
fn body_text(body: &[u8]) -> String {
    let mut body = String::from_utf8_lossy(body).trim().to_string();
    if body.len() > BODY_LIMIT {
        let mut cut = BODY_LIMIT;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push_str(" …");
    }
    body
}

/// One GET of `<url><path>`, verified against this node's cluster CA:
/// the status and the body.
fn get(host: &Host, url: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let target = Target::parse(url)?;
    let config = client_config(host)?;
    let server_name = ServerName::try_from(target.host.clone()).map_err(|err| {
        format!(
            "`{}` in {url} is not a valid TLS server name: {err}",
            target.host
        )
    })?;
    let tcp = connect(&target, url)?;
    let conn = rustls::ClientConnection::new(Arc::new(config), server_name)
        .map_err(|err| format!("cannot start TLS with {url}: {err}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kh-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.base_path,
        target.host_header()
    );
    tls.write_all(request.as_bytes())
        .and_then(|()| tls.flush())
        .map_err(|err| tls_failure(url, &err))?;
    let (bytes, read_error) = read_response(&mut tls);
    match parse_response(&bytes) {
        Ok(parsed) => Ok(parsed),
        Err(why) => Err(match read_error {
            Some(err) => tls_failure(url, &err),
            None => format!("{url}{path} did not answer with HTTP: {why}"),
        }),
    }
}

struct Target {
    host: String,
    port: u16,
    /// The URL's path without a trailing slash (usually empty).
    base_path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("`{url}` is not an apiserver URL: {why}; write it like https://10.0.0.11:6443")
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("only https:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("`[` is never closed"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad("garbage after the IPv6 address")),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        let port = match port {
            None => 443,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number 1-65535"))?,
        };
        Ok(Self {
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn client_config(host: &Host) -> Result<rustls::ClientConfig, String> {
    let pem = host
        .read_to_string(CLUSTER_CA_CERT)
        .map_err(|err| format!("cannot read the cluster CA: {err}"))?
        .ok_or_else(|| {
            format!("cannot verify the apiserver: {CLUSTER_CA_CERT} does not exist on this node; it appears with kubeadm init or a join")
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|err| format!("{CLUSTER_CA_CERT} is not valid PEM: {err}"))?;
        roots
            .add(cert)
            .map_err(|err| format!("{CLUSTER_CA_CERT} holds an unusable certificate: {err}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{CLUSTER_CA_CERT} holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn connect(target: &Target, url: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve `{}` from {url}: {err}", target.host))?
        .collect();
    let mut last = format!("`{}` resolves to no address", target.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, READYZ_TIMEOUT) {
            Ok(stream) => {
                let timeouts = stream
                    .set_read_timeout(Some(READYZ_TIMEOUT))
                    .and_then(|()| stream.set_write_timeout(Some(READYZ_TIMEOUT)));
                timeouts.map_err(|err| format!("cannot set timeouts on {addr}: {err}"))?;
                return Ok(stream);
            }
            Err(err) => last = format!("cannot connect to {addr} for {url}: {err}"),
        }
    }
    Err(last)
}

fn tls_failure(url: &str, err: &io::Error) -> String {
    let text = err.to_string();
    if text.contains("certificate") {
        format!("TLS with {url} failed: {text}; the apiserver's certificate must be issued by this node's {CLUSTER_CA_CERT} for the address in the URL")
    } else {
        format!("TLS with {url} failed: {text}")
    }
}

/// Reads until the server closes. A peer that closes without TLS
/// close_notify (common for HTTP servers) is treated as the end, since the
/// response carries its own length; the error is kept for when it does not
/// parse.
fn read_response(stream: &mut impl Read) -> (Vec<u8>, Option<io::Error>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (bytes, None),
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if bytes.len() > RESPONSE_LIMIT {
                    return (bytes, None);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return (bytes, Some(err)),
        }
    }
}

/// The status code and body of an HTTP/1.x response, with chunked transfer
/// encoding decoded.
fn parse_response(bytes: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no complete header")?;
    let head = String::from_utf8_lossy(&bytes[..split]);
    let rest = &bytes[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unexpected status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("unexpected status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "content-length" => length = value.parse::<usize>().ok(),
                _ => {}
            }
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or("the body is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line is incomplete")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or("a chunk is cut short")?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("a chunk is cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_ipv6() {
        let t = Target::parse("https://10.0.0.11:6443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base_path.as_str()),
            ("10.0.0.11", 6443, "")
        );
        let t = Target::parse("https://lb.example.internal/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("lb.example.internal", 443));
        let t = Target::parse("https://[fd00::1]:6443/prefix/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base_path.as_str()),
            ("fd00::1", 6443, "/prefix")
        );
        assert_eq!(t.host_header(), "[fd00::1]:6443");
        for bad in [
            "http://10.0.0.11:6443",
            "https://",
            "https://h:0",
            "https://h:x",
            "https://[fd00::1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let (status, body) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
        let chunked = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[-]et\r\nA;x=1\r\ncd failed\n\r\n0\r\n\r\n";
        let (status, body) = parse_response(chunked).unwrap();
        assert_eq!(status, 500);
        assert_eq!(body, b"[-]etcd failed\n");
        let (_, body) = parse_response(b"HTTP/1.0 503 x\r\n\r\nrest").unwrap();
        assert_eq!(body, b"rest");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok").is_err());
    }
}
