//! TLS for every kh connection, on rustls with the ring provider.
//!
//! Servers accept on their own loop so that (1) the certificate can be swapped
//! at run time when it is renewed and (2) each connection's peer certificate is
//! parsed once into a [`PeerInfo`], which tonic hands to every request as
//! connect info. The authorization layer reads it from there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::pki::{self, Identity};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid {what}: {detail}")]
    Material { what: &'static str, detail: String },
    #[error("could not build the TLS configuration: {0}")]
    Config(String),
    #[error("could not connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_from_pem(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Material {
        what,
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Material {
            what,
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "CA certificate")? {
        roots.add(c).map_err(|e| TlsError::Material {
            what: "CA certificate",
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A certificate chain with its key, ready to serve.
pub fn certified_key(
    chain_pem: &str,
    key_pem: &Secret<String>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(chain_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()).map_err(|e| {
        TlsError::Material {
            what: "private key",
            detail: e.to_string(),
        }
    })?;
    let signing =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Material {
                what: "private key",
                detail: e.to_string(),
            })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The server certificate, replaceable while the server runs.
#[derive(Debug, Clone)]
pub struct ServerCert(Arc<RwLock<Arc<CertifiedKey>>>);

impl ServerCert {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        ServerCert(Arc::new(RwLock::new(key)))
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Whether a server insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a kh certificate (the agent).
    Required,
    /// Anonymous clients may connect, but only reach RPCs the policy opens to
    /// them (the coordinator's enrollment). A certificate that is presented
    /// must still chain to the kh CA.
    Optional,
}

pub fn server_config(
    ca_pem: &str,
    cert: ServerCert,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = Arc::new(root_store(ca_pem)?);
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(cert));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is on the other end of a connection. `identity` is `None` for a client
/// without a certificate or with one that carries no kh identity.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub identity: Option<Identity>,
}

/// A server-side TLS connection that knows its peer.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listen backlog servers ask for: how many connections the kernel holds,
/// handshake done, until the accept loop takes them. Linux caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
///
/// tokio's `TcpListener::bind` asks for 128 (mio's default, std's value). A
/// burst of clients, such as a fleet of agents enrolling or reconnecting
/// after a coordinator restart, fills that before the accept loop, which
/// shares the runtime with hundreds of TLS handshakes, drains it; the kernel
/// then drops SYNs (`TcpExtListenOverflows`), and each client waits for
/// TCP's retransmission one second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`]. Must run inside a
/// tokio runtime.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted server can bind while connections of
    // its previous run are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts TCP connections and completes TLS handshakes concurrently, so a
/// slow or hostile client never holds up the others. Failed handshakes are
/// logged and dropped; they never end the stream.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<PeerStream, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| pki::identity_from_der(leaf).ok());
                        let _ = tx
                            .send(Ok(PeerStream {
                                inner: tls,
                                info: PeerInfo { remote, identity },
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Client credentials for a kh mTLS channel.
#[derive(Debug, Clone)]
pub struct ClientCreds {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Secret<String>,
}

/// Splits `host:port` (or `[v6]:port`) into its host part.
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A lazily connecting mTLS channel to `addr`, verifying the server against the
/// kh CA under `server_name`.
pub fn channel(
    addr: &str,
    server_name: &str,
    creds: Option<&ClientCreds>,
    ca_pem: &str,
) -> Result<Channel, TlsError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name(server_name);
    if let Some(c) = creds {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &c.cert_pem,
            c.key_pem.expose(),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| TlsError::Connect {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    Ok(endpoint.connect_lazy())
}

/// Connects to a TLS server without trusting it yet and returns the
/// certificate chain it presented. Used exactly once per enrollment: the
/// caller must compare the CA in the chain against the operator's pin before
/// sending anything. The handshake still proves the server holds the key of
/// the leaf certificate.
pub async fn fetch_presented_chain(addr: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let verifier = Arc::new(RecordingVerifier {
        seen: seen.clone(),
        provider: provider(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let conn_err = |detail: String| TlsError::Connect {
        addr: addr.to_string(),
        detail,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| {
            conn_err(
                "timed out after 10s; check the address and that no firewall drops the port".into(),
            )
        })?
        .map_err(|e| conn_err(e.to_string()))?;
    let name =
        ServerName::try_from(host_of(addr).to_string()).map_err(|e| conn_err(e.to_string()))?;
    let _tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| conn_err("TLS handshake timed out".into()))?
        .map_err(|e| conn_err(format!("TLS handshake failed: {e}")))?;
    let chain = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(chain)
}

/// Accepts any server certificate and remembers it. Only
/// [`fetch_presented_chain`] uses it, and its caller pins the CA by hash.
#[derive(Debug)]
struct RecordingVerifier {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(end_entity.to_vec());
        seen.extend(intermediates.iter().map(|c| c.to_vec()));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_connections_fits_the_backlog_without_accepting() {
        // With the 128 tokio asks for by default, the kernel drops the SYNs
        // beyond 129 and those connects stall for a second or more.
        const BURST: usize = 500;
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        assert!(
            somaxconn.is_some_and(|n| n > BURST),
            "net.core.somaxconn is {somaxconn:?}; this test needs more than {BURST} (the Linux default is 4096)"
        );
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..BURST).map(|_| TcpStream::connect(addr));
        let clients = tokio::time::timeout(
            Duration::from_millis(900),
            futures::future::try_join_all(connects),
        )
        .await
        .expect("every connect completes without a SYN retransmission")
        .unwrap();
        assert_eq!(clients.len(), BURST);
        let (_server, peer) = listener.accept().await.unwrap();
        assert!(clients.iter().any(|c| c.local_addr().unwrap() == peer));
    }

    #[test]
    fn host_of_handles_names_ips_and_v6() {
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("coord.example:7443"), "coord.example");
        assert_eq!(host_of("[::1]:7443"), "::1");
        assert_eq!(host_of("coord.example"), "coord.example");
    }
}
