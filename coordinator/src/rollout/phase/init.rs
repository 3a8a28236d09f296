//! Phase 4: `kubeadm init` on the first control plane, then the cluster CA
//! (the discovery hash, and the shared CA set with coordinator distribution).

use kh::kubeadm;
use kh::proto::{self, read_cluster_files_request::Set, run_step_request::Step};
use kh::secret::Secret;
use kh::spec::CertDistribution;

use super::Phase;
use super::{init_params, Ctx};
use crate::rollout::material;
use crate::rollout::ops::Failure;

pub(crate) async fn init(ctx: &Ctx<'_>, initialized: bool) -> Result<(), Failure> {
    let first = &ctx.first.name;
    let upload = ctx.spec.certificates == CertDistribution::UploadCerts;
    if initialized {
        ctx.rep
            .settle(
                Phase::Init,
                first,
                "kubeadm-init",
                "the control plane is initialized",
            )
            .await;
    }
    if !initialized && ctx.external_etcd {
        ctx.rep
            .tracked(Phase::Init, first, "external-etcd", async {
                crate::rollout::external_etcd::place(&ctx.ops, &ctx.coord.db, first).await?;
                let endpoints = ctx.etcd_endpoints(&[]);
                let summary =
                    crate::rollout::external_etcd::check_health(&ctx.ops, first, &endpoints)
                        .await?;
                Ok(((), format!("placed the etcd client files; {summary}")))
            })
            .await?;
    }
    if !initialized {
        ctx.rep
            .tracked(Phase::Init, first, "kubeadm-init", async {
                let mut m = ctx.material.lock().await;
                let config = kubeadm::render_init(&init_params(ctx, &m), false);
                let r = ctx
                    .ops
                    .step(
                        first,
                        "kubeadm-init",
                        Step::KubeadmInit(proto::KubeadmInit {
                            config_yaml: config.expose().clone(),
                            upload_certs: upload,
                        }),
                        false,
                    )
                    .await?;
                material::token_created(&ctx.coord.db, ctx.coord.clock.as_ref(), &mut m)?;
                if upload {
                    material::key_uploaded(&ctx.coord.db, ctx.coord.clock.as_ref(), &mut m)?;
                }
                Ok(((), r.message))
            })
            .await?;
    }
    // The discovery hash comes from the cluster CA itself, never from text.
    let needs_hash = ctx.material.lock().await.meta.ca_cert_hash.is_none();
    let needs_shared = ctx.spec.certificates == CertDistribution::Coordinator
        && material::load_shared_ca(&ctx.coord.db)?.is_none();
    if needs_hash || needs_shared {
        ctx.rep
            .tracked(Phase::Init, first, "collect-cluster-ca", async {
                let files = ctx
                    .ops
                    .read_files(first, Set::ClusterCa)
                    .await
                    .map_err(|e| {
                        Failure::at(
                            first,
                            "collect-cluster-ca",
                            format!("cannot read /etc/kubernetes/pki/ca.crt: {e}"),
                            "check that kubeadm init finished on this node",
                        )
                    })?;
                let ca = files.first().ok_or_else(|| {
                    Failure::at(first, "collect-cluster-ca", "no cluster CA returned", "")
                })?;
                let hash = kh::pki::spki_hash_pem(&String::from_utf8_lossy(&ca.contents)).map_err(
                    |e| {
                        Failure::at(
                            first,
                            "collect-cluster-ca",
                            format!("the cluster CA does not parse: {e}"),
                            "",
                        )
                    },
                )?;
                {
                    let mut m = ctx.material.lock().await;
                    m.meta.ca_cert_hash = Some(hash.clone());
                    material::save_meta(&ctx.coord.db, &m.meta)?;
                }
                let mut note = format!("discovery hash {hash}");
                if ctx.spec.certificates == CertDistribution::Coordinator {
                    let set = ctx
                        .ops
                        .read_files(first, Set::SharedCa)
                        .await
                        .map_err(|e| {
                            Failure::at(
                                first,
                                "collect-cluster-ca",
                                format!("cannot read the shared CA set: {e}"),
                                "",
                            )
                        })?;
                    let files: Vec<(String, Secret<String>)> = set
                        .into_iter()
                        .map(|f| {
                            (
                                f.path,
                                Secret::new(String::from_utf8_lossy(&f.contents).into_owned()),
                            )
                        })
                        .collect();
                    material::save_shared_ca(&ctx.coord.db, &files)?;
                    note.push_str("; stored the shared CA set (encrypted)");
                }
                Ok(((), note))
            })
            .await?;
    }
    Ok(())
}
