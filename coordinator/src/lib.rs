//! kh-coordinator: the single point of control of a kh cluster.
//!
//! It owns the kh CA and enrollment, the node registry, and (in later
//! capabilities) the rollout engine and every control-plane membership change.
//! It never touches a cluster host itself: every host effect is a typed step it
//! asks an agent to perform, through the `agents::AgentApi` seam. Only `store`
//! knows sled; only `rpc`, `server` and the gRPC client in `agents` know tonic.
//!
//! No unsafe code here: the package's lints only deny it, for the binary's
//! one call into glibc (`main.rs`), so the library forbids it itself.
#![forbid(unsafe_code)]

pub mod admins;
pub mod agents;
pub mod audit;
pub mod certs;
pub mod config;
pub mod error;
pub mod etcd;
pub mod lease;
pub mod metrics;
pub mod nodes;
pub mod pki;
pub mod prepare;
pub mod registry;
pub mod remediation;
pub mod rollout;
pub mod rpc;
pub mod server;
pub mod snapshots;
pub mod store;
pub mod tokens;

use std::sync::Arc;

use kh::names::NodeName;
use kh::pki::{Identity, Profile};
use kh::time::{unix_ms, Clock};
use tokio::sync::Semaphore;

pub use config::Config;
use error::CoordError;
use registry::Registry;
use store::Db;

/// Everything the services share.
pub struct Coordinator {
    pub config: Config,
    pub db: Db,
    pub pki: pki::Pki,
    pub registry: Registry,
    pub clock: Arc<dyn Clock>,
    /// Every call to an agent goes through this seam; tests put a fake here.
    pub agents: Arc<dyn agents::AgentApi>,
    pub rollouts: rollout::Running,
    /// When creating a token may next sweep out old spent ones.
    pub token_prune: tokens::PruneSchedule,
    /// Enrollments and renewals in flight on the blocking pool.
    pub signing: Arc<Semaphore>,
    /// Heartbeats' durable writes in flight on the blocking pool.
    pub registry_writes: Arc<Semaphore>,
    /// Admin certificates and their revocation.
    pub admins: admins::Admins,
    /// What the remediation watcher last observed, for `khctl remediation
    /// status`.
    pub remediation: remediation::Shared,
}

/// How many enrollments and renewals run at once. Each signs a certificate
/// and makes two synced writes on a thread of tokio's blocking pool. Without
/// a bound, 500 enrollments at once put up to 474 threads in the pool, each
/// with its stack, and touched all of glibc's arenas; sixteen keep enough
/// writes in flight for the store to sync them together (500 at once then
/// sign as fast as a steady stream, ~1,650 CSRs/s on 2 cores).
pub const SIGNING_LIMIT: usize = 16;
/// How many heartbeats' synced writes run at once, for the same reason.
pub const REGISTRY_WRITE_LIMIT: usize = 8;

impl Coordinator {
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Self>, CoordError> {
        create_private_dir(&config.data_dir)?;
        let db = Db::open(&config.data_dir, config.secret_key_file.as_deref())?;
        Self::with_db(config, db, clock)
    }

    pub fn with_db(config: Config, db: Db, clock: Arc<dyn Clock>) -> Result<Arc<Self>, CoordError> {
        Self::with_agents(config, db, clock, |pki| {
            Arc::new(agents::Agents::new(kh::tls::ClientCreds {
                ca_pem: pki.ca().cert_pem().to_string(),
                cert_pem: pki.serving_chain_pem.clone(),
                key_pem: pki.serving_key.clone(),
            }))
        })
    }

    /// A coordinator whose calls to agents go through `agents`, made once
    /// the PKI is loaded (the gRPC client presents its certificate).
    pub fn with_agents(
        config: Config,
        db: Db,
        clock: Arc<dyn Clock>,
        agents: impl FnOnce(&pki::Pki) -> Arc<dyn agents::AgentApi>,
    ) -> Result<Arc<Self>, CoordError> {
        let pki = pki::Pki::load_or_create(&db, &config, clock.now())?;
        let agents = agents(&pki);
        let admins = admins::Admins::load(db.clone())?;
        Ok(Arc::new(Coordinator {
            admins,
            agents,
            remediation: remediation::Shared::default(),
            rollouts: rollout::Running::default(),
            token_prune: tokens::PruneSchedule::default(),
            signing: Arc::new(Semaphore::new(SIGNING_LIMIT)),
            registry_writes: Arc::new(Semaphore::new(REGISTRY_WRITE_LIMIT)),
            registry: Registry::new(db.clone()),
            config,
            db,
            pki,
            clock,
        }))
    }

    /// The `host:port` agents and khctl use to reach this coordinator.
    pub fn public_address(&self) -> String {
        let host = self
            .config
            .advertise
            .first()
            .cloned()
            .unwrap_or_else(|| self.config.listen.ip().to_string());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("{host}:{}", self.config.listen.port())
    }

    /// Enrollment: token, node name and CSR in; a node certificate out.
    pub fn enroll(
        &self,
        token: &str,
        node_name: &str,
        csr_pem: &str,
    ) -> Result<kh::pki::Issued, CoordError> {
        let node = NodeName::new(node_name)?;
        let now = self.clock.now();
        let rec = tokens::check(&self.db, self.clock.as_ref(), token, &node)?;
        if let Some(existing) = self.registry.get(&node)? {
            if !rec.force {
                return Err(CoordError::AlreadyExists(format!(
                    "node {node} is already enrolled (since {}). To replace its identity, create a token with `khctl token create --node {node} --force`",
                    kh::time::rfc3339(existing.enrolled_ms)
                )));
            }
        }
        // The CSR is validated before the token is spent, so a broken agent
        // does not burn the operator's token.
        let issued = self.pki.ca().sign_csr(
            csr_pem,
            &Profile::node(&node, self.config.node_cert_validity),
            now,
        )?;
        tokens::spend(&self.db, self.clock.as_ref(), &rec)?;
        self.registry
            .enroll(&node, &issued.identity, unix_ms(now))?;
        tracing::info!(node = %node, serial = %issued.identity.serial, "node enrolled");
        Ok(issued)
    }

    pub fn renew(&self, caller: &Identity, csr_pem: &str) -> Result<kh::pki::Issued, CoordError> {
        let rec = self.registry.authenticate(caller)?;
        let issued = self.pki.ca().sign_csr(
            csr_pem,
            &Profile::node(&rec.name, self.config.node_cert_validity),
            self.clock.now(),
        )?;
        self.registry.renewed(rec, &issued.identity)?;
        tracing::info!(node = %caller.name, serial = %issued.identity.serial, "node certificate renewed");
        Ok(issued)
    }
}

pub(crate) fn create_private_dir(dir: &std::path::Path) -> Result<(), CoordError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |e: std::io::Error| {
        CoordError::Store(store::StoreError::Io(format!(
            "data dir {}: {e}",
            dir.display()
        )))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    Ok(())
}
