//! Just enough HTTPS for the doubles: one request per connection
//! (`Connection: close`), blocking I/O, rustls on both ends. The apiserver
//! double serves with it; the kubeadm and kubectl doubles call it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("bad certificate PEM: {e}"))?;
    if v.is_empty() {
        return Err(anyhow!("no certificate in PEM"));
    }
    Ok(v)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow!("bad private key PEM: {e}"))
}

/// How a client trusts the server.
#[derive(Clone)]
pub enum Trust {
    /// Verify against this CA (PEM).
    Ca(String),
    /// Accept any server certificate: kubeadm's token discovery fetches
    /// cluster-info this way and then validates it by JWS and CA pin.
    Insecure,
}

/// How a client authenticates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Client certificate and key, PEM.
    pub cert: Option<(String, String)>,
    /// `Authorization: Bearer`.
    pub bearer: Option<String>,
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A response as the client sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The `message` of a Kubernetes `Status` body, or the raw body.
    pub fn message(&self) -> String {
        self.json()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.body.trim().to_string())
    }

    pub fn reason(&self) -> String {
        self.json()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// TCP connect refused or timed out: (host:port, detail).
    Connect(String, String),
    /// TLS or transport failure after connecting.
    Transport(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cert", &self.cert.as_ref().map(|_| "<redacted>"))
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(addr, e) => write!(f, "dial tcp {addr}: {e}"),
            CallError::Transport(e) => f.write_str(e),
        }
    }
}

/// Client TLS: how the client trusts the server and which certificate it
/// presents (`creds.bearer` is not TLS and is ignored here).
pub fn client_config(trust: &Trust, creds: &Credentials) -> Result<Arc<ClientConfig>> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Ca(pem) => {
            let mut roots = RootCertStore::empty();
            for c in certs(pem)? {
                roots.add(c)?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider()))),
    };
    let config = match &creds.cert {
        Some((c, k)) => builder.with_client_auth_cert(certs(c)?, key(k)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The TLS server name for a host: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string())
            .map_err(|e| anyhow!("bad server name {host:?}: {e}"))?,
    })
}

/// A client for one `https://host:port` server.
#[derive(Clone)]
pub struct Client {
    pub server: String,
    host: String,
    port: u16,
    config: Arc<ClientConfig>,
    bearer: Option<String>,
    pub timeout: Duration,
}

impl Client {
    pub fn new(server: &str, trust: &Trust, creds: &Credentials) -> Result<Client> {
        let rest = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("server {server:?} is not https://"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("server {server:?} has no port"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port: u16 = port.parse().with_context(|| format!("port of {server}"))?;
        Ok(Client {
            server: format!("https://{rest}"),
            host,
            port,
            config: client_config(trust, creds)?,
            bearer: creds.bearer.clone(),
            timeout: Duration::from_secs(30),
        })
    }

    /// `host:port` as kubectl names the server in its errors.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply, CallError> {
        self.call("GET", path, None)
    }

    pub fn delete(&self, path: &str) -> Result<Reply, CallError> {
        self.call("DELETE", path, None)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<Reply, CallError> {
        self.call("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> Result<Reply, CallError> {
        self.call("PUT", path, Some(body))
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, CallError> {
        let hp = self.host_port();
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| CallError::Connect(hp.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| CallError::Connect(hp.clone(), "no address".into()))?;
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
            let detail = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
                std::io::ErrorKind::TimedOut => "i/o timeout".to_string(),
                _ => e.to_string(),
            };
            CallError::Connect(hp.clone(), detail)
        })?;
        let t = |e: std::io::Error| CallError::Transport(e.to_string());
        sock.set_read_timeout(Some(self.timeout)).map_err(t)?;
        sock.set_write_timeout(Some(self.timeout)).map_err(t)?;
        let name = match self.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|e| CallError::Transport(e.to_string()))?,
        };
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hp}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: kh-testbed\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(b) = &self.bearer {
            head.push_str(&format!("Authorization: Bearer {b}\r\n"));
        }
        head.push_str("\r\n");
        let tls_err = |e: std::io::Error| {
            CallError::Transport(format!("tls: {e}").replace("tls: tls: ", "tls: "))
        };
        tls.write_all(head.as_bytes()).map_err(tls_err)?;
        tls.write_all(payload.as_bytes()).map_err(tls_err)?;
        tls.flush().map_err(tls_err)?;
        let mut buf = vec![];
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A peer that closes without close_notify: keep what came.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
                Err(e) => return Err(tls_err(e)),
            }
            if complete(&buf) {
                break;
            }
        }
        parse_reply(&buf).ok_or_else(|| {
            CallError::Transport(format!(
                "malformed HTTP response: {:?}",
                String::from_utf8_lossy(&buf)
            ))
        })
    }
}

/// Whether `buf` holds a whole response (headers and Content-Length body).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    match content_length(&head) {
        Some(n) => buf.len() >= end + 4 + n,
        None => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &buf[end + 4..];
    let body = match content_length(&head) {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    Some(Reply {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// One response read off a connection that may be kept alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server lets the connection carry another request: HTTP/1.1
    /// without `Connection: close`, and a body whose end was framed
    /// (`Content-Length` or chunked), not marked by closing.
    pub keep_alive: bool,
}

/// Parses one HTTP/1.x response from the start of `buf`, with a
/// `Content-Length` body, a chunked body (Go's net/http chunks every body
/// it cannot buffer whole, such as etcd's larger ones), or, without either,
/// a body that ends where the connection ended (`eof`). `Ok(None)`: more
/// bytes are needed. `Ok(Some((response, used)))`: `used` bytes of `buf`
/// were this response.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(RawResponse, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            Err("connection closed in the response head".into())
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("malformed HTTP status line {first:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = version == "HTTP/1.1";
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {v:?}"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
    }
    let start = end + 4;
    let done = |body: Vec<u8>, used: usize, keep_alive: bool| {
        Ok(Some((
            RawResponse {
                status,
                body,
                keep_alive,
            },
            used,
        )))
    };
    if chunked {
        let mut body = vec![];
        let mut at = start;
        loop {
            let Some(nl) = find(&buf[at..], b"\r\n") else {
                return incomplete(eof);
            };
            let line = String::from_utf8_lossy(&buf[at..at + nl]);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
            at += nl + 2;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    let Some(nl) = find(&buf[at..], b"\r\n") else {
                        return incomplete(eof);
                    };
                    at += nl + 2;
                    if nl == 0 {
                        return done(body, at, keep_alive);
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return incomplete(eof);
            }
            body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
            at += size + 2;
        }
    }
    match length {
        Some(n) if buf.len() >= start + n => {
            done(buf[start..start + n].to_vec(), start + n, keep_alive)
        }
        Some(_) => incomplete(eof),
        None if status == 204 || status == 304 || (100..200).contains(&status) => {
            done(vec![], start, keep_alive)
        }
        None if eof => done(buf[start..].to_vec(), buf.len(), false),
        None => Ok(None),
    }
}

fn incomplete(eof: bool) -> Result<Option<(RawResponse, usize)>, String> {
    if eof {
        Err("connection closed in the response body".into())
    } else {
        Ok(None)
    }
}

/// A request as the server sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The verified client certificate (DER), if one was presented.
    pub peer_cert: Option<Vec<u8>>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(v).unwrap_or_default(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Verifies a client certificate's chain but not its validity period, as
/// kube-apiserver's TLS layer does (`RequestClientCert`): the x509
/// authenticator judges the period afterwards and answers 401, which the
/// apiserver double does at the testbed clock.
#[derive(Debug)]
struct ChainOnly(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for ChainOnly {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Check the chain at an instant inside the leaf's own validity.
        let at = crate::kube::pki::validity_of(end_entity)
            .map(|(from, until)| {
                UnixTime::since_unix_epoch(Duration::from_secs(
                    (from + (until - from) / 2).max(0) as u64
                ))
            })
            .unwrap_or(now);
        self.0.verify_client_cert(end_entity, intermediates, at)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Server TLS: `cert`/`key` PEM; client certificates are optional and, when
/// presented, verified against `client_ca`.
pub fn server_config(cert: &str, key_pem: &str, client_ca: &str) -> Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    for c in certs(client_ca)? {
        roots.add(c)?;
    }
    let verifier = Arc::new(ChainOnly(
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()?,
    ));
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(key_pem)?)?;
    Ok(Arc::new(cfg))
}

/// Serves forever: one thread per connection, one request per connection.
pub fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<dyn Fn(Request) -> Response + Send + Sync>,
) -> ! {
    loop {
        let Ok((sock, _)) = listener.accept() else {
            continue;
        };
        let tls = tls.clone();
        let handler = handler.clone();
        std::thread::spawn(move || {
            let _ = handle(sock, tls, handler);
        });
    }
}

fn handle(
    sock: TcpStream,
    tls: Arc<ServerConfig>,
    handler: Arc<dyn Fn(Request) -> Response + Send + Sync>,
) -> Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(tls)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    let peer_cert = s
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let mut buf = vec![];
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let want = content_length(&head).unwrap_or(0);
    while buf.len() < end + 4 + want {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or("/");
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body_end = (end + 4 + want).min(buf.len());
    let req = Request {
        method,
        path: percent_decode(path),
        query,
        headers,
        body: buf[end + 4..body_end].to_vec(),
        peer_cert,
    };
    let resp = handler(req);
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&resp.body)?;
    s.conn.send_close_notify();
    s.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::pki::{CaPair, Leaf};

    #[test]
    fn responses_parse_with_length_chunks_or_close() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1";
        let (resp, used) = parse_response(r, false).unwrap().unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice(), resp.keep_alive),
            (200, &b"{}"[..], true)
        );
        assert_eq!(used, r.len() - "HTTP/1.1".len());
        // Every prefix is incomplete, or an error once the peer has closed.
        for i in 0..used {
            assert_eq!(parse_response(&r[..i], false), Ok(None), "prefix {i}");
            assert!(
                i == 0 || parse_response(&r[..i], true).is_err(),
                "prefix {i}"
            );
        }

        let c = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nGrpc-Status: 0\r\n\r\n";
        let (resp, used) = parse_response(c, false).unwrap().unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice(), used),
            (503, &b"hello, world"[..], c.len())
        );
        for i in 0..c.len() {
            assert_eq!(parse_response(&c[..i], false), Ok(None), "prefix {i}");
        }
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false
        )
        .is_err());

        let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(
            !parse_response(closing, false)
                .unwrap()
                .unwrap()
                .0
                .keep_alive
        );
        let unframed = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(parse_response(unframed, false), Ok(None));
        let (resp, _) = parse_response(unframed, true).unwrap().unwrap();
        assert_eq!(
            (resp.body.as_slice(), resp.keep_alive),
            (&b"all of it"[..], false)
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
    }

    #[test]
    fn a_client_certificate_reaches_the_handler() {
        let ca = CaPair::generate("kubernetes").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (scert, skey) = ca
            .issue(&Leaf {
                cn: "kube-apiserver".into(),
                ips: vec![ip],
                server: true,
                ..Leaf::default()
            })
            .unwrap();
        let (ccert, ckey) = ca
            .issue(&Leaf {
                cn: "kubernetes-admin".into(),
                orgs: vec!["kubeadm:cluster-admins".into()],
                client: true,
                ..Leaf::default()
            })
            .unwrap();
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = server_config(&scert, &skey, &ca.cert_pem).unwrap();
        std::thread::spawn(move || {
            serve(
                listener,
                tls,
                Arc::new(|r: Request| {
                    let who = r
                        .peer_cert
                        .as_deref()
                        .and_then(crate::kube::pki::subject_of)
                        .map(|s| s.0)
                        .unwrap_or_else(|| "anonymous".into());
                    Response::text(200, format!("{} {} {who}", r.method, r.path))
                }),
            )
        });
        let server = format!("https://127.0.0.1:{port}");
        let c = Client::new(
            &server,
            &Trust::Ca(ca.cert_pem.clone()),
            &Credentials {
                cert: Some((ccert, ckey)),
                bearer: None,
            },
        )
        .unwrap();
        let r = c.get("/api/v1/nodes").unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "GET /api/v1/nodes kubernetes-admin")
        );
        // A certificate expired by the real clock still completes the
        // handshake: the handler (the apiserver's authenticator) judges it.
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(400 * 86_400);
        let (old_cert, old_key) = ca
            .issue_between(
                &Leaf {
                    cn: "kubernetes-admin".into(),
                    orgs: vec!["kubeadm:cluster-admins".into()],
                    client: true,
                    ..Leaf::default()
                },
                long_ago,
                long_ago + Duration::from_secs(365 * 86_400),
            )
            .unwrap();
        let expired = Client::new(
            &server,
            &Trust::Ca(ca.cert_pem.clone()),
            &Credentials {
                cert: Some((old_cert, old_key)),
                bearer: None,
            },
        )
        .unwrap();
        assert_eq!(
            expired.get("/api").unwrap().body,
            "GET /api kubernetes-admin"
        );
        let anon = Client::new(&server, &Trust::Insecure, &Credentials::default()).unwrap();
        assert_eq!(anon.get("/healthz").unwrap().body, "GET /healthz anonymous");
    }
}
