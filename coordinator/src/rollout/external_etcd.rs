//! The external etcd topology (`etcd: {topology: external, ...}`): the
//! operator runs etcd; kube-apiserver reaches it over TLS with a CA and a
//! client certificate the operator hands over. khctl reads the three files
//! (relative to the spec) and sends them with the rollout; the coordinator
//! keeps them sealed in its store and places them on every control plane
//! before `kubeadm init` or `kubeadm join`, at kubeadm's own paths. This
//! replaces the kubeadm HA guide's `scp` of those files.
//!
//! kh never changes the external cluster's membership: it only checks that
//! the cluster is healthy, through a control plane's agent with those files.

use std::collections::HashMap;

use kh::kubeadm::{EXTERNAL_ETCD_CA_FILE, EXTERNAL_ETCD_CERT_FILE, EXTERNAL_ETCD_KEY_FILE};
use kh::proto::{self, run_step_request::Step};
use kh::secret::Secret;

use super::ops::{Failure, Ops};
use crate::error::CoordError;
use crate::store::Db;

const PREFIX: &str = "cluster/external-etcd/";

/// (spec field khctl names the file by, host path on a control plane, mode).
pub const FILES: [(&str, &str, u32); 3] = [
    ("etcd.caFile", EXTERNAL_ETCD_CA_FILE, 0o644),
    ("etcd.certFile", EXTERNAL_ETCD_CERT_FILE, 0o644),
    ("etcd.keyFile", EXTERNAL_ETCD_KEY_FILE, 0o600),
];

fn key(field: &str) -> String {
    format!("{PREFIX}{field}")
}

/// Seals the client files a rollout request carries; without them, the ones
/// stored by an earlier rollout must exist. A file that is not PEM is
/// refused with the field it came from.
pub fn store_from_request(db: &Db, files: &HashMap<String, Vec<u8>>) -> Result<(), Failure> {
    let sent: Vec<&str> = FILES
        .iter()
        .map(|(f, _, _)| *f)
        .filter(|f| files.contains_key(*f))
        .collect();
    if sent.is_empty() {
        return match load(db).map_err(Failure::from)? {
            Some(_) => Ok(()),
            None => Err(Failure::spec(
                "spec.etcd.caFile, certFile, keyFile: the files were not sent and the coordinator holds none; run the rollout with khctl, which reads them relative to the spec file",
            )),
        };
    }
    if sent.len() != FILES.len() {
        let missing: Vec<&str> = FILES
            .iter()
            .map(|(f, _, _)| *f)
            .filter(|f| !sent.contains(f))
            .collect();
        return Err(Failure::spec(format!(
            "spec.{}: not sent with the others; send all three external etcd files",
            missing.join(", spec.")
        )));
    }
    let mut texts = vec![];
    for (field, _, _) in FILES {
        let text = String::from_utf8(files[field].clone()).map_err(|_| {
            Failure::spec(format!(
                "spec.{field}: the file is not text; give the PEM file"
            ))
        })?;
        if !text.contains("-----BEGIN ") {
            return Err(Failure::spec(format!(
                "spec.{field}: the file is not PEM (no `-----BEGIN` line); give the PEM file the etcd cluster's CA issued"
            )));
        }
        texts.push((field, text));
    }
    for (field, text) in texts {
        db.put_secret(&key(field), &Secret::new(text))
            .map_err(|e| Failure::from(CoordError::from(e)))?;
    }
    Ok(())
}

/// A file for a control plane: (host path, contents, mode).
pub type ClientFile = (String, Secret<String>, u32);

/// The stored files, or `None` when a rollout never sent them.
pub fn load(db: &Db) -> Result<Option<Vec<ClientFile>>, CoordError> {
    let mut out = vec![];
    for (field, path, mode) in FILES {
        match db.get_secret(&key(field))? {
            Some(s) => out.push((path.to_string(), s, mode)),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Forgets the stored files (`khctl reset`).
pub fn wipe(db: &Db) -> Result<(), CoordError> {
    for (field, _, _) in FILES {
        db.delete(&key(field))?;
    }
    Ok(())
}

/// Places the CA and the apiserver's client certificate and key on a
/// control plane: before init or a join, since `kubeadm reset` removes them
/// with the rest of /etc/kubernetes/pki.
pub async fn place(ops: &Ops<'_>, db: &Db, node: &str) -> Result<(), Failure> {
    let files = load(db)?.ok_or_else(|| {
        Failure::at(
            node,
            "place-etcd-client-files",
            "the coordinator holds no external etcd client files",
            "run `khctl rollout -f cluster.yaml`: khctl sends the files spec.etcd names",
        )
    })?;
    ops.step(
        node,
        "place-etcd-client-files",
        Step::PlaceFiles(proto::PlaceFiles {
            files: files
                .into_iter()
                .map(|(path, contents, mode)| proto::PlacedFile {
                    path,
                    contents: contents.expose().as_bytes().to_vec(),
                    mode,
                })
                .collect(),
        }),
        false,
    )
    .await?;
    Ok(())
}

/// Asks `via` (a control plane with the client files) whether every
/// endpoint of the external cluster is healthy; returns a summary.
pub async fn check_health(
    ops: &Ops<'_>,
    via: &str,
    endpoints: &[String],
) -> Result<String, Failure> {
    let fail = |message: String| {
        Failure::at(
            via,
            "external-etcd-health",
            message,
            "check the external etcd cluster (`etcdctl endpoint health` with the apiserver's client certificate) and the endpoints and files in spec.etcd",
        )
    };
    let health = ops
        .etcd_health(via, endpoints, true)
        .await
        .map_err(|e| fail(format!("cannot reach the external etcd cluster: {e}")))?;
    let sick: Vec<String> = endpoints
        .iter()
        .filter_map(
            |ep| match health.health.iter().find(|h| h.endpoint == *ep) {
                Some(h) if h.healthy => None,
                Some(h) => Some(format!("{ep}: {}", h.error)),
                None => Some(format!("{ep}: no answer")),
            },
        )
        .collect();
    if !sick.is_empty() {
        return Err(fail(format!(
            "the external etcd cluster is not healthy: {}",
            sick.join("; ")
        )));
    }
    Ok(format!(
        "external etcd healthy: {} endpoints",
        endpoints.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(what: &str) -> Vec<u8> {
        format!("-----BEGIN {what}-----\nAAAA\n-----END {what}-----\n").into_bytes()
    }

    #[test]
    fn files_are_sealed_reused_and_wiped() {
        let db = Db::in_memory();
        assert!(store_from_request(&db, &HashMap::new()).is_err());
        let mut files = HashMap::new();
        files.insert("etcd.caFile".to_string(), pem("CERTIFICATE"));
        let err = store_from_request(&db, &files).unwrap_err();
        assert!(err.message.contains("etcd.certFile"), "{}", err.message);
        files.insert("etcd.certFile".to_string(), pem("CERTIFICATE"));
        files.insert("etcd.keyFile".to_string(), b"not a key".to_vec());
        let err = store_from_request(&db, &files).unwrap_err();
        assert!(err.message.contains("spec.etcd.keyFile"), "{}", err.message);
        files.insert("etcd.keyFile".to_string(), pem("EC PRIVATE KEY"));
        store_from_request(&db, &files).unwrap();
        let raw = db
            .raw()
            .get(&key("etcd.keyFile"))
            .unwrap()
            .unwrap_or_default();
        assert!(!String::from_utf8_lossy(&raw).contains("PRIVATE KEY"));
        // A later rollout without the files reuses the stored ones.
        store_from_request(&db, &HashMap::new()).unwrap();
        let stored = load(&db).unwrap().unwrap();
        assert_eq!(stored[2].0, EXTERNAL_ETCD_KEY_FILE);
        assert_eq!(stored[2].2, 0o600);
        wipe(&db).unwrap();
        assert!(load(&db).unwrap().is_none());
    }
}
