//! The heartbeat loop: report facts to the coordinator on its interval, and
//! renew the node certificate before it expires.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kh::proto::node_client::NodeClient;
use kh::proto::{HeartbeatRequest, RenewRequest};
use tonic::transport::Channel;

use crate::identity::AgentIdentity;
use crate::metrics::ResultLabel;
use crate::state::{unix_secs, AgentState};

/// Facts change rarely and collecting them runs a few commands.
const FACTS_EVERY: Duration = Duration::from_secs(60);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn channel_for(id: &AgentIdentity) -> anyhow::Result<Channel> {
    let addr = &id.enrollment.coordinator;
    Ok(kh::tls::channel(
        addr,
        kh::tls::host_of(addr),
        Some(&id.creds()),
        &id.ca_pem,
    )?)
}

pub async fn collect_facts(state: &Arc<AgentState>) -> kh::proto::Facts {
    let st = state.clone();
    let facts =
        tokio::task::spawn_blocking(move || kh_host::collect(&st.host, &st.extra_addresses))
            .await
            .unwrap_or_default();
    to_proto(facts)
}

/// The facts on the wire, kept within the bounds the coordinator enforces,
/// so an odd host still reports what fits instead of being refused.
pub fn to_proto(f: kh_host::Facts) -> kh::proto::Facts {
    let mut facts = kh::proto::Facts {
        hostname: f.hostname,
        addresses: f.addresses.iter().map(|a| a.to_string()).collect(),
        os: f.os,
        kernel: f.kernel,
        arch: f.arch,
        product_uuid: f.product_uuid,
        mac_addresses: f.mac_addresses,
        swap_active: f.swap_active,
        cgroup_version: f.cgroup_version as u32,
        containerd_version: f.containerd_version,
        kubeadm_version: f.kubeadm_version,
        kubelet_version: f.kubelet_version,
        cpu_count: f.cpu_count,
        memory_bytes: f.memory_bytes,
        kubectl_version: f.kubectl_version,
        package_manager: f.package_manager,
    };
    kh::bounds::clamp_facts(&mut facts);
    facts
}

pub async fn run(state: Arc<AgentState>) {
    let mut channel: Option<(String, Channel)> = None;
    let mut facts: Option<(Instant, kh::proto::Facts)> = None;
    // A slow etcdctl must never delay a heartbeat: the member check has a
    // task of its own.
    tokio::spawn(watch_local_etcd(state.clone()));
    loop {
        let id = state.identity();
        if let Some(at) = id.renew_at() {
            if SystemTime::now() >= at {
                match renew(&state, &id).await {
                    Ok(()) => tracing::info!("renewed the node certificate"),
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate renewal failed; retrying next beat")
                    }
                }
            }
        }
        let id = state.identity();
        // A renewed certificate means a new channel.
        if channel
            .as_ref()
            .map(|(serial, _)| serial != &id.cert_pem)
            .unwrap_or(true)
        {
            match channel_for(&id) {
                Ok(c) => channel = Some((id.cert_pem.clone(), c)),
                Err(e) => {
                    record_failure(
                        &state,
                        format!("cannot set up the coordinator channel: {e}"),
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if facts
            .as_ref()
            .map(|(at, _)| at.elapsed() >= FACTS_EVERY)
            .unwrap_or(true)
        {
            facts = Some((Instant::now(), collect_facts(&state).await));
        }
        let req = HeartbeatRequest {
            facts: facts.as_ref().map(|(_, f)| f.clone()),
            endpoint: state.endpoint.clone(),
            agent_version: kh::VERSION.to_string(),
        };
        let (_, ch) = channel.as_ref().expect("set above");
        let mut client = NodeClient::new(ch.clone());
        let mut request = tonic::Request::new(req);
        request.set_timeout(RPC_TIMEOUT);
        let interval = match client.heartbeat(request).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let interval = Duration::from_millis(resp.interval_ms.max(100));
                set_retired(&state, resp.retired.then_some(resp.retired_reason));
                {
                    let mut hb = state.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
                    hb.last_ok = Some(Instant::now());
                    hb.last_error = None;
                    hb.interval = Some(interval);
                }
                state
                    .metrics
                    .heartbeats
                    .get_or_create(&ResultLabel {
                        result: "success".into(),
                    })
                    .inc();
                state
                    .metrics
                    .last_heartbeat
                    .set(unix_secs(SystemTime::now()));
                interval
            }
            Err(status) => {
                let msg = if status.code() == tonic::Code::Unauthenticated {
                    tracing::error!(message = %status.message(), "the coordinator no longer accepts this agent's certificate");
                    status.message().to_string()
                } else {
                    format!("{:?}: {}", status.code(), status.message())
                };
                record_failure(&state, msg);
                state
                    .heartbeat_status()
                    .interval
                    .unwrap_or(Duration::from_secs(2))
                    .min(Duration::from_secs(5))
            }
        };
        tokio::time::sleep(interval).await;
    }
}

/// Checks the local etcd member every five heartbeats (at most every 15 s):
/// cheap, and soon enough for an alert's `for: 2m`.
async fn watch_local_etcd(state: Arc<AgentState>) {
    loop {
        check_local_etcd(&state).await;
        let every = state
            .heartbeat_status()
            .interval
            .map(|i| (i * 5).min(Duration::from_secs(15)))
            .unwrap_or(Duration::from_secs(15));
        tokio::time::sleep(every).await;
    }
}

/// Sets `kh_agent_etcd_member_healthy` for this host's stacked etcd member,
/// if it runs one, so monitoring can alert on an unhealthy member.
async fn check_local_etcd(state: &Arc<AgentState>) {
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let endpoint = kh_host::kube::local_etcd_endpoint(&st.host)
            .ok()
            .flatten()?;
        let client = kh_host::kube::EtcdClient::stacked(vec![endpoint.clone()]);
        let healthy = client
            .endpoint_health(&st.host, kh_host::kube::Scope::Endpoints)
            .map(|h| h.iter().all(|e| e.healthy) && !h.is_empty())
            .unwrap_or(false);
        Some((endpoint, healthy))
    })
    .await;
    let family = &state.metrics.etcd_member_healthy;
    family.clear();
    if let Ok(Some((endpoint, healthy))) = result {
        family
            .get_or_create(&crate::metrics::EndpointLabel { endpoint })
            .set(healthy as i64);
    }
}

/// One heartbeat outside the loop, for the serial of the coordinator's
/// current certificate that its answer names (`crate::pin`). It carries no
/// facts, so the coordinator keeps those it has.
pub async fn current_coordinator_serial(state: &Arc<AgentState>) -> Result<String, String> {
    let id = state.identity();
    let channel = channel_for(&id).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(HeartbeatRequest {
        facts: None,
        endpoint: state.endpoint.clone(),
        agent_version: kh::VERSION.to_string(),
    });
    request.set_timeout(RPC_TIMEOUT);
    let resp = NodeClient::new(channel)
        .heartbeat(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(resp.coordinator_serial)
}

fn record_failure(state: &AgentState, msg: String) {
    tracing::warn!(error = %msg, "heartbeat failed");
    state
        .heartbeat
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_error = Some(msg);
    state
        .metrics
        .heartbeats
        .get_or_create(&ResultLabel {
            result: "failure".into(),
        })
        .inc();
}

async fn renew(state: &Arc<AgentState>, id: &AgentIdentity) -> anyhow::Result<()> {
    let key = kh::pki::generate_key()?;
    let csr = kh::pki::csr_pem(&key, &format!("node/{}", id.enrollment.node_name))?;
    let mut client = NodeClient::new(channel_for(id)?);
    let mut request = tonic::Request::new(RenewRequest { csr_pem: csr });
    request.set_timeout(RPC_TIMEOUT);
    let resp = client.renew(request).await?.into_inner();
    let renewed = AgentIdentity {
        enrollment: id.enrollment.clone(),
        ca_pem: resp.ca_pem,
        cert_pem: resp.certificate_pem,
        key_pem: key,
    };
    // Saved before use: the coordinator accepts the old certificate until it
    // sees the new one, so a crash here costs nothing.
    state.paths.save(&renewed)?;
    state.replace_identity(renewed)?;
    Ok(())
}

/// Records what the coordinator says of this node's retirement, logging a
/// change once.
fn set_retired(state: &AgentState, now: Option<String>) {
    let mut r = state.retired.lock().unwrap_or_else(|e| e.into_inner());
    if *r != now {
        match &now {
            Some(why) => {
                tracing::warn!(reason = %why, "the coordinator retired this node: it refuses every step that changes the cluster; only host preparation and `kubeadm reset` run (`khctl spares add` makes it a spare again)")
            }
            None => tracing::info!("this node is no longer retired"),
        }
        *r = now;
    }
}
