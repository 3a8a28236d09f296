//! kubeconfig files as kubeadm writes them (`admin.conf`, `kubelet.conf`,
//! ...), and reading them back as kubectl does: the current context's
//! server, CA and credentials, embedded (`*-data`) or by file path.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::json;

use super::http::{Client, Credentials, Trust};
use super::{b64, unb64, NodeEnv};

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum User {
    /// Embedded client certificate and key (PEM).
    CertData {
        cert: String,
        key: String,
    },
    /// Certificate and key in one file (the kubelet's rotated
    /// `kubelet-client-current.pem`), by host path.
    CertFile(String),
    Token(String),
}

/// Renders a kubeconfig with one cluster, one user and one context, as
/// kubeadm does.
pub fn render(cluster: &str, server: &str, ca_pem: &str, user_name: &str, user: &User) -> String {
    let user_v = match user {
        User::CertData { cert, key } => json!({
            "client-certificate-data": b64(cert),
            "client-key-data": b64(key),
        }),
        User::CertFile(p) => json!({"client-certificate": p, "client-key": p}),
        User::Token(t) => json!({"token": t}),
    };
    let ctx = format!("{user_name}@{cluster}");
    let v = json!({
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": b64(ca_pem), "server": server}, "name": cluster}],
        "contexts": [{"context": {"cluster": cluster, "user": user_name}, "name": ctx}],
        "current-context": ctx,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": user_name, "user": user_v}],
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// What a kubeconfig's current context points at.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub ca_pem: Option<String>,
    pub creds: Credentials,
}

impl Target {
    pub fn client(&self) -> Result<Client> {
        let trust = match &self.ca_pem {
            Some(ca) => Trust::Ca(ca.clone()),
            None => Trust::Insecure,
        };
        Client::new(&self.server, &trust, &self.creds)
    }
}

/// Reads the kubeconfig at host path `file` (resolved under the node's
/// root); paths inside it are host paths too.
pub fn load(env: &NodeEnv, file: &Path) -> Result<Target> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("open {}: no such file or directory", file.display()))?;
    parse(&text, |p| {
        std::fs::read_to_string(env.path(p)).with_context(|| format!("open {p}"))
    })
}

pub fn parse(text: &str, read: impl Fn(&str) -> Result<String>) -> Result<Target> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).context("invalid kubeconfig")?;
    let current = v["current-context"]
        .as_str()
        .ok_or_else(|| anyhow!("invalid configuration: no configuration has been provided"))?;
    let named = |list: &str, name: &str, inner: &str| -> Option<serde_yaml::Value> {
        v[list]
            .as_sequence()?
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| e[inner].clone())
    };
    let ctx = named("contexts", current, "context")
        .ok_or_else(|| anyhow!("context was not found for specified context: {current}"))?;
    let cluster_name = ctx["cluster"].as_str().unwrap_or_default();
    let user_name = ctx["user"].as_str().unwrap_or_default();
    let cluster = named("clusters", cluster_name, "cluster")
        .ok_or_else(|| anyhow!("cluster {cluster_name:?} not found"))?;
    let user = named("users", user_name, "user").unwrap_or(serde_yaml::Value::Null);
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| anyhow!("no server found for cluster {cluster_name:?}"))?
        .to_string();
    let text_of =
        |data_key: &str, file_key: &str, m: &serde_yaml::Value| -> Result<Option<String>> {
            if let Some(d) = m[data_key].as_str() {
                let bytes = unb64(d).ok_or_else(|| anyhow!("{data_key} is not base64"))?;
                return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
            }
            match m[file_key].as_str() {
                Some(p) => read(p).map(Some),
                None => Ok(None),
            }
        };
    let ca_pem = text_of(
        "certificate-authority-data",
        "certificate-authority",
        &cluster,
    )?;
    let cert = text_of("client-certificate-data", "client-certificate", &user)?;
    let key = text_of("client-key-data", "client-key", &user)?;
    let creds = Credentials {
        cert: cert.zip(key),
        bearer: user["token"].as_str().map(str::to_string),
    };
    Ok(Target {
        server,
        ca_pem,
        creds,
    })
}

/// The CA (PEM) of the first cluster in a kubeconfig without contexts,
/// such as the one in the `cluster-info` ConfigMap.
pub fn first_cluster_ca(text: &str) -> Result<String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).context("invalid kubeconfig")?;
    let data = v["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .ok_or_else(|| anyhow!("the kubeconfig has no cluster with certificate-authority-data"))?;
    let bytes = unb64(data).ok_or_else(|| anyhow!("certificate-authority-data is not base64"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_kubeconfig_reads_back() {
        let text = render(
            "kubernetes",
            "https://10.0.0.1:6443",
            "CA",
            "kubernetes-admin",
            &User::CertData {
                cert: "C".into(),
                key: "K".into(),
            },
        );
        let t = parse(&text, |_| Err(anyhow!("no files"))).unwrap();
        assert_eq!(t.server, "https://10.0.0.1:6443");
        assert_eq!(t.ca_pem.as_deref(), Some("CA"));
        assert_eq!(t.creds.cert, Some(("C".into(), "K".into())));
        assert!(text.contains("current-context: kubernetes-admin@kubernetes"));
    }
}
