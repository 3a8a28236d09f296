//! Calls to agents. The coordinator presents its own certificate (role
//! coordinator) and verifies each agent by its node certificate's name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kh::proto::agent_client::AgentClient;
use kh::tls::ClientCreds;
use tonic::transport::Channel;

use crate::error::CoordError;
use crate::registry::NodeRecord;

pub struct Agents {
    creds: ClientCreds,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl Agents {
    pub fn new(creds: ClientCreds) -> Self {
        Agents {
            creds,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `node`, reusing its channel while its endpoint is unchanged.
    pub fn client(&self, node: &NodeRecord) -> Result<AgentClient<Channel>, CoordError> {
        if node.endpoint.is_empty() {
            return Err(CoordError::Unavailable(format!(
                "node {} has never sent a heartbeat, so its address is unknown; check that `kh-agent serve` runs there",
                node.name
            )));
        }
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match map.get(node.name.as_str()) {
            Some((ep, ch)) if ep == &node.endpoint => ch.clone(),
            _ => {
                let ch = kh::tls::channel(
                    &node.endpoint,
                    &node.name.tls_server_name(),
                    Some(&self.creds),
                    &self.creds.ca_pem,
                )
                .map_err(|e| CoordError::Unavailable(format!("node {}: {e}", node.name)))?;
                map.insert(node.name.to_string(), (node.endpoint.clone(), ch.clone()));
                ch
            }
        };
        Ok(AgentClient::new(ch))
    }
}

/// A request with a deadline, so a hung agent cannot hang an operation.
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Describes a failed agent call for an operator.
pub fn explain(node: &str, s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            format!(
                "cannot reach the agent on {node}: {}; check `systemctl status kh-agent` there",
                s.message()
            )
        }
        tonic::Code::DeadlineExceeded => format!("the agent on {node} did not answer in time"),
        _ => format!(
            "the agent on {node} answered {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}
