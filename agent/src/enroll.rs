//! `kh-agent enroll`: pin the coordinator's CA by hash, then trade the token
//! and a CSR for a node certificate. The private key is generated here and
//! never leaves the host.

use std::time::SystemTime;

use kh::names::NodeName;
use kh::proto::enrollment_client::EnrollmentClient;
use kh::proto::EnrollRequest;

use crate::identity::{AgentIdentity, CoordinatorPin, Enrollment, Paths};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("--ca-cert-hash {0:?} is not of the form sha256:<64 hex digits>; copy it from the command `khctl token create` printed")]
    BadPin(String),
    #[error(transparent)]
    Name(#[from] kh::names::InvalidName),
    #[error(transparent)]
    Tls(#[from] kh::tls::TlsError),
    #[error("the coordinator at {addr} presented a CA whose hash is {seen}, but --ca-cert-hash is {pinned}. Refusing to send the token: either the hash was mistyped or something is intercepting the connection. Compare with the hash `khctl token create` printed")]
    PinMismatch {
        addr: String,
        seen: String,
        pinned: String,
    },
    #[error("the coordinator at {addr} refused the enrollment: {message}")]
    Refused { addr: String, message: String },
    #[error("cannot reach the coordinator at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error(transparent)]
    Pki(#[from] kh::pki::PkiError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("the coordinator returned a certificate for {got}, not node/{want}")]
    WrongIdentity { got: String, want: String },
    #[error("this agent is already enrolled as {node} with {coordinator}. Pass --force to replace its identity (the coordinator token must also allow it)")]
    AlreadyEnrolled { node: String, coordinator: String },
}

pub struct EnrollArgs {
    pub coordinator: String,
    pub token: String,
    pub ca_cert_hash: String,
    pub node_name: String,
    pub force: bool,
}

pub enum EnrollOutcome {
    Enrolled { not_after: Option<SystemTime> },
    AlreadyEnrolled { not_after: Option<SystemTime> },
}

pub async fn enroll(paths: &Paths, args: EnrollArgs) -> Result<EnrollOutcome, EnrollError> {
    let node = NodeName::new(&args.node_name)?;
    let pinned = kh::pki::parse_pin(&args.ca_cert_hash)
        .ok_or_else(|| EnrollError::BadPin(args.ca_cert_hash.clone()))?;
    if paths.exists() && !args.force {
        let current = paths.load()?;
        let same_ca =
            kh::pki::spki_hash_pem(&current.ca_pem).ok().as_deref() == Some(pinned.as_str());
        let valid = current.not_after().is_some_and(|t| t > SystemTime::now());
        if same_ca
            && valid
            && current.enrollment.node_name == node.as_str()
            && current.enrollment.coordinator == args.coordinator
        {
            // Re-running the same enroll command is harmless.
            return Ok(EnrollOutcome::AlreadyEnrolled {
                not_after: current.not_after(),
            });
        }
        return Err(EnrollError::AlreadyEnrolled {
            node: current.enrollment.node_name,
            coordinator: current.enrollment.coordinator,
        });
    }

    // Trust on first use, but only for the CA the operator pinned.
    let chain = kh::tls::fetch_presented_chain(&args.coordinator).await?;
    let mut seen = Vec::new();
    let mut ca_der = None;
    for der in &chain {
        let hash = kh::pki::spki_hash_der(der)?;
        if hash == pinned {
            ca_der = Some(der.clone());
            break;
        }
        seen.push(hash);
    }
    let ca_pem = match ca_der {
        Some(der) => kh::pki::der_to_pem(&der),
        None => {
            return Err(EnrollError::PinMismatch {
                addr: args.coordinator.clone(),
                seen: seen
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "<no certificate>".into()),
                pinned,
            })
        }
    };

    let key = kh::pki::generate_key()?;
    let csr = kh::pki::csr_pem(&key, &format!("node/{node}"))?;
    let channel = kh::tls::channel(
        &args.coordinator,
        kh::tls::host_of(&args.coordinator),
        None,
        &ca_pem,
    )?;
    let resp = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: args.token.clone(),
            node_name: node.to_string(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                EnrollError::Unreachable {
                    addr: args.coordinator.clone(),
                    message: s.message().to_string(),
                }
            }
            _ => EnrollError::Refused {
                addr: args.coordinator.clone(),
                message: s.message().to_string(),
            },
        })?
        .into_inner();
    let got = kh::pki::identity_from_der(&kh::pki::first_cert_der(&resp.certificate_pem)?)?;
    if got.role != kh::pki::Role::Node || got.name != node.as_str() {
        return Err(EnrollError::WrongIdentity {
            got: got.to_string(),
            want: node.to_string(),
        });
    }
    let id = AgentIdentity {
        enrollment: Enrollment {
            coordinator: args.coordinator,
            node_name: node.to_string(),
        },
        ca_pem,
        cert_pem: resp.certificate_pem,
        key_pem: key,
    };
    paths.save(&id)?;
    // The first contact pins the coordinator: from now on only its
    // certificate may run steps here (`crate::pin`). A coordinator too old
    // to name its serial leaves no pin, and the agent pins the first caller
    // its coordinator confirms. The leaf of the first handshake gives the expiry when it is the
    // certificate the verified channel then named.
    let leaf = chain
        .first()
        .and_then(|der| kh::pki::identity_from_der(der).ok());
    let pin = (!resp.coordinator_serial.is_empty()).then(|| CoordinatorPin {
        not_after: leaf
            .filter(|l| l.serial == resp.coordinator_serial)
            .map(|l| kh::time::unix_ms(l.not_after) / 1000)
            .unwrap_or(0),
        serial: resp.coordinator_serial.clone(),
    });
    paths.save_pin(pin.as_ref())?;
    Ok(EnrollOutcome::Enrolled {
        not_after: id.not_after(),
    })
}
