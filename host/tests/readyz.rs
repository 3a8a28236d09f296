//! `apiserver_readyz` against a local TLS server whose certificate comes
//! from a test cluster CA, and `Host::tcp_probe` against real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::TestHost;
use kh_host::kube::{apiserver_readyz, CLUSTER_CA_CERT};
use kh_host::TcpProbe;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// A cluster CA and an apiserver certificate for `sans`.
fn pki(sans: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubernetes");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Serves one canned HTTP response per connection, in order, over TLS;
/// sends each request's head back through the channel.
fn serve(pki: &Pki, responses: Vec<&'static str>) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for response in responses {
            let Ok((tcp, _)) = listener.accept() else {
                return;
            };
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            // A client that rejects our certificate aborts the handshake
            // here; that connection simply ends.
            while !request.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => request.push(byte[0]),
                    _ => break,
                }
            }
            if !request.ends_with(b"\r\n\r\n") {
                continue;
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            let _ = tls.write_all(response.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (addr, rx)
}

fn host_with_ca(ca_pem: &str) -> TestHost {
    let t = TestHost::new();
    t.write(CLUSTER_CA_CERT, ca_pem);
    t
}

#[test]
fn a_ready_apiserver_is_verified_against_the_cluster_ca() {
    let pki = pki(&["127.0.0.1", "kubernetes.default.svc"]);
    let (addr, requests) = serve(
        &pki,
        vec!["HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\r\nok"],
    );
    let t = host_with_ca(&pki.ca_pem);
    let url = format!("https://{addr}");
    assert_eq!(apiserver_readyz(&t.host(), &url), Ok(()));
    let request = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains(&format!("\r\nHost: {addr}\r\n")),
        "{request}"
    );
}

#[test]
fn a_not_ready_apiserver_returns_its_body() {
    let pki = pki(&["127.0.0.1"]);
    let (addr, _requests) = serve(
        &pki,
        vec![
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nTransfer-Encoding: chunked\r\n\r\n19\r\n[+]ping ok\n[+]log ok\n[-]e\r\n2f\r\ntcd failed: reason withheld\nreadyz check failed\r\n0\r\n\r\n",
        ],
    );
    let t = host_with_ca(&pki.ca_pem);
    let err = apiserver_readyz(&t.host(), &format!("https://{addr}/")).unwrap_err();
    assert!(err.contains("/readyz answered HTTP 500"), "{err}");
    assert!(err.contains("[-]etcd failed: reason withheld"), "{err}");
    assert!(err.ends_with("readyz check failed"), "{err}");
}

#[test]
fn a_certificate_from_another_ca_or_for_another_name_is_refused() {
    let pki = pki(&["127.0.0.1"]);
    let other = self::pki(&["127.0.0.1"]);
    let (addr, requests) = serve(&pki, vec!["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]);
    let t = host_with_ca(&other.ca_pem);
    let err = apiserver_readyz(&t.host(), &format!("https://{addr}")).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains(CLUSTER_CA_CERT), "{err}");
    assert!(requests.try_recv().is_err(), "no request was sent");

    let named = self::pki(&["kube-apiserver.example"]);
    let (addr, _requests) = serve(
        &named,
        vec!["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    );
    let t = host_with_ca(&named.ca_pem);
    let err = apiserver_readyz(&t.host(), &format!("https://{addr}")).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn missing_ca_and_closed_ports_are_explained() {
    let t = TestHost::new();
    let err = apiserver_readyz(&t.host(), "https://127.0.0.1:6443").unwrap_err();
    assert!(
        err.contains("/etc/kubernetes/pki/ca.crt does not exist"),
        "{err}"
    );

    let pki = pki(&["127.0.0.1"]);
    let t = host_with_ca(&pki.ca_pem);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = apiserver_readyz(&t.host(), &format!("https://127.0.0.1:{port}")).unwrap_err();
    assert!(err.contains("cannot connect to 127.0.0.1"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    let err = apiserver_readyz(&t.host(), "http://127.0.0.1:6443").unwrap_err();
    assert!(err.contains("only https://"), "{err}");
}

#[test]
fn a_probe_times_out_when_the_listener_drops_syns() {
    // A listener that never accepts fills its accept queue; after that the
    // kernel drops new SYNs, which a client sees as a timeout, the same as
    // a firewall that drops packets.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let mut filled = false;
    for _ in 0..2000 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => held.push(stream),
            Err(_) => {
                filled = true;
                break;
            }
        }
    }
    assert!(
        filled,
        "the accept queue never filled after {} connections",
        held.len()
    );
    let host = TestHost::new().host();
    let started = Instant::now();
    assert_eq!(
        host.tcp_probe(&addr.to_string(), Duration::from_millis(300)),
        TcpProbe::TimedOut
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}
