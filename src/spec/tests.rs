use super::*;

const FULL: &str = "\
apiVersion: kh.io/v1alpha1
kind: Cluster
metadata: {name: prod}
spec:
  kubernetesVersion: 1.31.2-rc.1
  controlPlaneEndpoint: lb.example.internal:6443
  networking: {podSubnet: 10.32.0.0/16, serviceSubnet: 10.112.0.0/12}
  etcd:
    topology: external
    endpoints: [https://10.0.0.31:2379, 'https://[fd00::32]:2379/']
    caFile: etcd/ca.crt
    certFile: /etc/kh/etcd/client.crt
    keyFile: etcd/client.key
  certificates: {distribution: coordinator, renewBefore: 720h, autoRenew: false}
  cni: {manifest: ./cni/flannel.yaml}
  loadBalancer: {type: haproxy}
  rollout: {workerConcurrency: 25}
  upgrade: {maxUnavailable: 25%}
  nodes:
    - {name: cp-1, role: control-plane, address: 10.0.0.11}
    - {name: cp-2, role: control-plane, address: 10.0.0.12}
    - {name: cp-3, role: control-plane, address: 10.0.0.13}
    - {name: w-1, role: worker, address: 10.0.0.21}
    - {name: w-2, role: worker, address: 'fd00::22'}
    - {name: lb-1, role: loadbalancer, address: 10.0.0.5}
";

const MINIMAL: &str = "\
apiVersion: kh.io/v1alpha1
kind: Cluster
metadata: {name: lab}
spec:
  nodes:
    - {name: cp-1, role: control-plane, address: 127.0.0.11}
    - {name: w-1, role: worker, address: 127.0.0.21}
";

fn node(name: &str, role: NodeRole, address: &str) -> NodeSpec {
    NodeSpec {
        name: name.to_string(),
        role,
        address: address.parse().unwrap(),
    }
}

fn with_control_planes(n: usize) -> ClusterSpec {
    let mut spec = parse(MINIMAL).unwrap();
    spec.nodes = (1..=n)
        .map(|i| {
            node(
                &format!("cp-{i}"),
                NodeRole::ControlPlane,
                &format!("10.0.0.{i}"),
            )
        })
        .collect();
    spec
}

#[test]
fn full_spec_parses_to_exactly_what_it_says() {
    let spec = parse(FULL).unwrap();
    let expected = ClusterSpec {
        name: "prod".into(),
        kubernetes_version: Some(KubeVersion::parse("v1.31.2-rc.1").unwrap()),
        control_plane_endpoint: Some(Endpoint {
            host: "lb.example.internal".into(),
            port: 6443,
        }),
        networking: Networking {
            pod_subnet: "10.32.0.0/16".parse().unwrap(),
            service_subnet: "10.112.0.0/12".parse().unwrap(),
        },
        etcd: Etcd::External {
            endpoints: vec![
                "https://10.0.0.31:2379".into(),
                "https://[fd00::32]:2379/".into(),
            ],
            ca_file: "etcd/ca.crt".into(),
            cert_file: "/etc/kh/etcd/client.crt".into(),
            key_file: "etcd/client.key".into(),
        },
        certificates: CertDistribution::Coordinator,
        cert_renewal: CertRenewal {
            renew_before: std::time::Duration::from_secs(720 * 3600),
            auto_renew: false,
        },
        cni: Some(Cni {
            manifest: "./cni/flannel.yaml".into(),
        }),
        load_balancer: LoadBalancerType::Haproxy,
        worker_concurrency: 25,
        upgrade: UpgradeSettings {
            max_unavailable: MaxUnavailable::Percent(25),
        },
        nodes: vec![
            node("cp-1", NodeRole::ControlPlane, "10.0.0.11"),
            node("cp-2", NodeRole::ControlPlane, "10.0.0.12"),
            node("cp-3", NodeRole::ControlPlane, "10.0.0.13"),
            node("w-1", NodeRole::Worker, "10.0.0.21"),
            node("w-2", NodeRole::Worker, "fd00::22"),
            node("lb-1", NodeRole::LoadBalancer, "10.0.0.5"),
        ],
        etcd_snapshots: None,
        spares: vec![],
        remediation: Default::default(),
    };
    assert_eq!(spec, expected);
    assert_eq!(
        spec.kubernetes_version.as_ref().unwrap().to_string(),
        "v1.31.2-rc.1"
    );
}

#[test]
fn minimal_spec_takes_the_defaults() {
    let spec = parse(MINIMAL).unwrap();
    assert_eq!(
        spec,
        ClusterSpec {
            name: "lab".into(),
            kubernetes_version: None,
            control_plane_endpoint: None,
            networking: Networking {
                pod_subnet: DEFAULT_POD_SUBNET.parse().unwrap(),
                service_subnet: DEFAULT_SERVICE_SUBNET.parse().unwrap(),
            },
            etcd: Etcd::Stacked,
            certificates: CertDistribution::UploadCerts,
            cert_renewal: CertRenewal {
                renew_before: DEFAULT_RENEW_BEFORE,
                auto_renew: true,
            },
            cni: None,
            load_balancer: LoadBalancerType::External,
            worker_concurrency: DEFAULT_WORKER_CONCURRENCY,
            upgrade: UpgradeSettings::default(),
            nodes: vec![
                node("cp-1", NodeRole::ControlPlane, "127.0.0.11"),
                node("w-1", NodeRole::Worker, "127.0.0.21"),
            ],
            etcd_snapshots: None,
            spares: vec![],
            remediation: Default::default(),
        }
    );
    assert_eq!(spec.networking.pod_subnet.to_string(), "10.244.0.0/16");
    assert_eq!(spec.networking.service_subnet.to_string(), "10.96.0.0/12");
}

#[test]
fn load_balancer_defaults_to_haproxy_exactly_when_a_loadbalancer_node_exists() {
    let with_lb =
        format!("{MINIMAL}    - {{name: lb-1, role: loadbalancer, address: 127.0.0.5}}\n");
    assert_eq!(
        parse(&with_lb).unwrap().load_balancer,
        LoadBalancerType::Haproxy
    );
    assert_eq!(
        parse(MINIMAL).unwrap().load_balancer,
        LoadBalancerType::External
    );
    // Empty sub-sections mean "all defaults", like absent ones.
    let empty_sections = MINIMAL.replace(
            "  nodes:\n",
            "  etcd: {}\n  certificates: {}\n  loadBalancer: {}\n  rollout: {}\n  networking: {}\n  nodes:\n",
        );
    assert_eq!(parse(&empty_sections).unwrap(), parse(MINIMAL).unwrap());
}

#[test]
fn role_helpers_and_node_lookup() {
    let spec = parse(FULL).unwrap();
    let names =
        |it: &mut dyn Iterator<Item = &NodeSpec>| it.map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&mut spec.control_planes()), ["cp-1", "cp-2", "cp-3"]);
    assert_eq!(names(&mut spec.workers()), ["w-1", "w-2"]);
    assert_eq!(names(&mut spec.load_balancers()), ["lb-1"]);
    assert_eq!(
        spec.node("w-2").unwrap().address,
        "fd00::22".parse::<IpAddr>().unwrap()
    );
    assert_eq!(spec.node("w-3"), None);
    assert_eq!(NodeRole::ControlPlane.as_str(), "control-plane");
    assert_eq!(NodeRole::LoadBalancer.to_string(), "loadbalancer");
    assert_eq!(CertDistribution::UploadCerts.as_str(), "upload-certs");
    assert_eq!(LoadBalancerType::Haproxy.as_str(), "haproxy");
}

#[test]
fn json_output_uses_the_yaml_vocabulary() {
    let json = serde_json::to_value(parse(FULL).unwrap()).unwrap();
    assert_eq!(json["kubernetesVersion"], "v1.31.2-rc.1");
    assert_eq!(json["controlPlaneEndpoint"]["port"], 6443);
    assert_eq!(json["networking"]["podSubnet"], "10.32.0.0/16");
    assert_eq!(json["etcd"]["topology"], "external");
    assert_eq!(json["etcd"]["caFile"], "etcd/ca.crt");
    assert_eq!(json["certificates"], "coordinator");
    assert_eq!(json["certRenewal"]["renewBefore"], "30days");
    assert_eq!(json["certRenewal"]["autoRenew"], false);
    assert_eq!(json["loadBalancer"], "haproxy");
    assert_eq!(json["workerConcurrency"], 25);
    assert_eq!(json["nodes"][0]["role"], "control-plane");
    assert_eq!(json["nodes"][5]["role"], "loadbalancer");
    let minimal = serde_json::to_value(parse(MINIMAL).unwrap()).unwrap();
    assert_eq!(minimal["etcd"], serde_json::json!({"topology": "stacked"}));
}

#[test]
fn all_validation_errors_are_reported_one_per_line() {
    let text = MINIMAL
        .replace("kind: Cluster", "kind: Clusters")
        .replace("127.0.0.21", "worker-1");
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.errors.len(), 2);
    assert_eq!(errors.errors[0].path, "kind");
    assert_eq!(errors.errors[1].path, "spec.nodes[1].address");
    assert_eq!(
        errors.to_string(),
        format!("{}\n{}", errors.errors[0], errors.errors[1])
    );
    assert!(errors
        .to_string()
        .starts_with("kind: \"Clusters\" is not a kh cluster spec; set kind: Cluster\n"));
}

#[test]
fn relative_paths_resolve_against_the_spec_directory() {
    let mut spec = parse(FULL).unwrap();
    spec.resolve_relative_paths(Path::new("/srv/clusters/prod"));
    assert_eq!(
        spec.cni.as_ref().unwrap().manifest,
        Path::new("/srv/clusters/prod/./cni/flannel.yaml")
    );
    let Etcd::External {
        ca_file, cert_file, ..
    } = &spec.etcd
    else {
        panic!("the full spec has external etcd");
    };
    assert_eq!(ca_file, Path::new("/srv/clusters/prod/etcd/ca.crt"));
    assert_eq!(
        cert_file,
        Path::new("/etc/kh/etcd/client.crt"),
        "absolute paths stay"
    );
}

#[test]
fn control_plane_counts_are_judged_for_quorum() {
    assert_eq!(
        with_control_planes(1).control_plane_count_check(false),
        Ok(Some(
            "a single control plane is not highly available: losing it stops the cluster".into()
        ))
    );
    assert_eq!(
            with_control_planes(2).control_plane_count_check(false),
            Err(SpecError::new(
                "spec.nodes",
                "two control planes are worse than one: etcd needs both for quorum, so either failure stops the cluster. Use 1 or 3, or pass --allow-even"
            ))
        );
    assert_eq!(
            with_control_planes(2).control_plane_count_check(true),
            Ok(Some(
                "two control planes are worse than one: etcd needs both for quorum, so either failure stops the cluster".into()
            ))
        );
    assert_eq!(
        with_control_planes(3).control_plane_count_check(false),
        Ok(None)
    );
    assert_eq!(
            with_control_planes(4).control_plane_count_check(false),
            Err(SpecError::new(
                "spec.nodes",
                "4 control planes survive no more failures than 3: etcd needs 3 of them for quorum, so the cluster tolerates only one failure. Use 3 or 5, or pass --allow-even"
            ))
        );
    assert_eq!(
            with_control_planes(6).control_plane_count_check(true),
            Ok(Some(
                "6 control planes survive no more failures than 5: etcd needs 4 of them for quorum, so the cluster tolerates only 2 failures".into()
            ))
        );
    assert_eq!(
        with_control_planes(5).control_plane_count_check(false),
        Ok(None)
    );
    assert_eq!(
        with_control_planes(5).control_plane_count_check(true),
        Ok(None)
    );
    assert!(with_control_planes(0)
        .control_plane_count_check(true)
        .is_err());
}

#[test]
fn check_enrolled_names_each_missing_node_with_the_enroll_command() {
    let spec = parse(FULL).unwrap();
    let all: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(spec.check_enrolled(&all), Vec::new());
    let errors = spec.check_enrolled(&["cp-1", "cp-2", "cp-3", "w-1", "unrelated"]);
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
            lines,
            [
                "spec.nodes[4].name: node \"w-2\" is not enrolled with the coordinator; enroll it first: `khctl token create --node w-2` and run the printed command on the host",
                "spec.nodes[5].name: node \"lb-1\" is not enrolled with the coordinator; enroll it first: `khctl token create --node lb-1` and run the printed command on the host",
            ]
        );
}

#[test]
fn kube_versions_parse_normalize_and_refuse() {
    let v = KubeVersion::parse("1.32.0").unwrap();
    assert_eq!(v.to_string(), "v1.32.0");
    assert_eq!((v.major(), v.minor(), v.patch(), v.pre()), (1, 32, 0, None));
    assert_eq!(v, "v1.32.0".parse::<KubeVersion>().unwrap());
    let rc = KubeVersion::parse("v1.33.0-rc.1").unwrap();
    assert_eq!(rc.pre(), Some("rc.1"));
    assert_eq!(rc.to_string(), "v1.33.0-rc.1");
    assert_eq!(
        KubeVersion::parse("v1.24.0").unwrap().minor(),
        MIN_KUBERNETES_MINOR
    );

    let syntax = "is not an exact Kubernetes release: write v<major>.<minor>.<patch>, e.g. v1.32.0 (kh installs exactly what the spec names)";
    for bad in [
        "latest",
        "stable",
        "1.32",
        "v1.32",
        "v1.32.x",
        "v1.32.0.1",
        "",
        "v",
        "V1.32.0",
        "v1.032.0",
        "v1.32.-1",
        "v1.32.0-",
        "v1.32.0-rc..1",
        "v1.32.0+k3s1",
        " v1.32.0",
    ] {
        let err = KubeVersion::parse(bad).unwrap_err();
        assert_eq!(err.why, syntax, "{bad:?}");
        assert_eq!(err.input, bad);
    }
    assert!(KubeVersion::parse("v1.20.0")
        .unwrap_err()
        .why
        .starts_with("is too old"));
    assert!(KubeVersion::parse("v1.23.17")
        .unwrap_err()
        .why
        .starts_with("is too old"));
    assert!(KubeVersion::parse("v2.0.0")
        .unwrap_err()
        .why
        .contains("1.x only"));
    assert!(KubeVersion::parse("v0.32.0")
        .unwrap_err()
        .why
        .contains("1.x only"));
}

#[test]
fn kubeadm_api_version_switches_at_1_31() {
    let api = |v: &str| KubeVersion::parse(v).unwrap().kubeadm_api_version();
    assert_eq!(api("v1.24.0"), "kubeadm.k8s.io/v1beta3");
    assert_eq!(api("v1.30.5"), "kubeadm.k8s.io/v1beta3");
    assert_eq!(api("v1.31.0-alpha.1"), "kubeadm.k8s.io/v1beta4");
    assert_eq!(api("v1.31.0"), "kubeadm.k8s.io/v1beta4");
    assert_eq!(api("v1.33.2"), "kubeadm.k8s.io/v1beta4");
}

#[test]
fn kube_versions_order_by_semver_precedence() {
    let ordered = [
        "v1.24.0",
        "v1.30.5",
        "v1.31.0-alpha.1",
        "v1.31.0-alpha.beta",
        "v1.31.0-beta.2",
        "v1.31.0-beta.11",
        "v1.31.0-rc.1",
        "v1.31.0-rc.1.1",
        "v1.31.0",
        "v1.31.1",
        "v1.100.0",
    ];
    let versions: Vec<KubeVersion> = ordered
        .iter()
        .map(|v| KubeVersion::parse(v).unwrap())
        .collect();
    for pair in versions.windows(2) {
        assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
    }
    let mut shuffled = versions.clone();
    shuffled.reverse();
    shuffled.sort();
    assert_eq!(shuffled, versions);
    assert_eq!(
        KubeVersion::parse("1.31.0")
            .unwrap()
            .cmp(&KubeVersion::parse("v1.31.0").unwrap()),
        Ordering::Equal
    );
}

#[test]
fn endpoints_parse_hosts_and_ports() {
    let ep = |s: &str| Endpoint::parse(s).map(|e| (e.host.clone(), e.port, e.to_string()));
    assert_eq!(
        ep("lb.example.internal:6443"),
        Ok((
            "lb.example.internal".into(),
            6443,
            "lb.example.internal:6443".into()
        ))
    );
    assert_eq!(
        ep("10.0.0.5:443"),
        Ok(("10.0.0.5".into(), 443, "10.0.0.5:443".into()))
    );
    assert_eq!(
        ep("[::1]:6443"),
        Ok(("::1".into(), 6443, "[::1]:6443".into()))
    );
    assert_eq!(
        ep("[FD00:0::10]:65535"),
        Ok(("fd00::10".into(), 65535, "[fd00::10]:65535".into()))
    );
    assert_eq!(ep("LB-1:1").unwrap().1, 1);
    assert_eq!(
        Endpoint::parse("[::1]:6443").unwrap().host_ip(),
        Some("::1".parse().unwrap())
    );
    assert_eq!(Endpoint::parse("lb:6443").unwrap().host_ip(), None);

    let why = |s: &str| Endpoint::parse(s).unwrap_err().why;
    assert_eq!(why(""), "it is empty");
    assert_eq!(why("lb"), "the port is missing");
    assert_eq!(why("[::1]"), "the port is missing");
    for bad_port in [
        "lb:abc", "lb:", "lb:0", "lb:65536", "lb:+443", "lb:-1", "[::1]:x",
    ] {
        assert_eq!(why(bad_port), "port must be a number 1-65535", "{bad_port}");
    }
    assert_eq!(why("::1:6443"), "IPv6 addresses need brackets");
    assert_eq!(why("[::1:6443"), "'[' is never closed");
    assert_eq!(
        why("[lb]:6443"),
        "only an IPv6 address may stand in brackets"
    );
    for bad_host in [
        "-lb:6443",
        "lb-:6443",
        "lb..x:6443",
        "lb_1:6443",
        "10.0.0.256:6443",
        ":6443",
    ] {
        assert!(
            why(bad_host).contains("neither an IP address nor an RFC 1123 DNS name"),
            "{bad_host}"
        );
    }
    assert!(why(&format!("{}:6443", "a".repeat(64))).contains("RFC 1123"));
    assert_eq!(
        Endpoint::parse("lb:abc").unwrap_err().to_string(),
        "\"lb:abc\": port must be a number 1-65535"
    );
}

#[test]
fn cluster_names_are_dns_labels() {
    for ok in ["prod", "a", "prod-2", &"a".repeat(63)] {
        assert!(is_dns_label(ok), "{ok}");
    }
    for bad in [
        "",
        "Prod",
        "prod.eu",
        "-prod",
        "prod-",
        "pr_od",
        &"a".repeat(64),
    ] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}

#[test]
fn errors_quoting_a_huge_key_or_value_stay_short() {
    let huge = "k".repeat(1 << 20);
    for text in [
            format!("apiVersion: {API_VERSION}\nkind: Cluster\nmetadata: {{name: x}}\n? {huge}\n: 1\n"),
            format!("apiVersion: {huge}\nkind: Cluster\nmetadata: {{name: x}}\n"),
            format!("apiVersion: {API_VERSION}\nkind: Cluster\nmetadata: {{name: x}}\nspec:\n  nodes:\n  - {{name: {huge}, role: worker, address: 10.0.0.1}}\n"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.len() < 4096, "a {}-byte error: {}", err.len(), &err[..300]);
            assert!(err.contains("(1048576 bytes)"), "{err}");
        }
}

#[test]
fn worker_concurrency_bounds() {
    let with = |n: &str| {
        parse(&MINIMAL.replace(
            "  nodes:\n",
            &format!("  rollout: {{workerConcurrency: {n}}}\n  nodes:\n"),
        ))
        .map(|s| s.worker_concurrency)
    };
    assert_eq!(with("1"), Ok(1));
    assert_eq!(with("1000"), Ok(1000));
    for bad in ["0", "-1", "1001", "99999999999"] {
        let err = with(bad).unwrap_err();
        assert_eq!(
            err.errors[0].path, "spec.rollout.workerConcurrency",
            "{bad}"
        );
    }
}

#[test]
fn max_unavailable_is_a_count_or_a_percentage_of_the_workers() {
    let with = |v: &str| {
        parse(&MINIMAL.replace(
            "  nodes:\n",
            &format!("  upgrade: {{maxUnavailable: {v}}}\n  nodes:\n"),
        ))
        .map(|s| s.upgrade.max_unavailable)
    };
    assert_eq!(
        parse(MINIMAL).unwrap().upgrade.max_unavailable,
        MaxUnavailable::Count(1)
    );
    assert_eq!(with("1"), Ok(MaxUnavailable::Count(1)));
    assert_eq!(with("3"), Ok(MaxUnavailable::Count(3)));
    assert_eq!(with("'2'"), Ok(MaxUnavailable::Count(2)));
    assert_eq!(with("25%"), Ok(MaxUnavailable::Percent(25)));
    assert_eq!(with("'100%'"), Ok(MaxUnavailable::Percent(100)));
    for bad in ["0", "-1", "0%", "101%", "-5%", "lots", "1.5", "[1]", "'x%'"] {
        let err = with(bad).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{bad}: {err}");
        assert_eq!(err.errors[0].path, "spec.upgrade.maxUnavailable", "{bad}");
        assert!(
            err.errors[0].message.contains("e.g. maxUnavailable: 25%"),
            "{bad}: {err}"
        );
    }
    // A percentage of the workers, rounded down, at least one, at most all.
    assert_eq!(MaxUnavailable::Percent(25).batch(10), 2);
    assert_eq!(MaxUnavailable::Percent(50).batch(3), 1);
    assert_eq!(MaxUnavailable::Percent(10).batch(3), 1);
    assert_eq!(MaxUnavailable::Percent(100).batch(3), 3);
    assert_eq!(MaxUnavailable::Count(5).batch(3), 3);
    assert_eq!(MaxUnavailable::Count(2).batch(0), 1);
    let json = serde_json::to_value(
        parse(&MINIMAL.replace("  nodes:\n", "  upgrade: {maxUnavailable: 50%}\n  nodes:\n"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["upgrade"]["maxUnavailable"], "50%");
}

#[test]
fn renew_before_takes_hours_or_days_inside_a_year() {
    let with = |certs: &str| {
        parse(&MINIMAL.replace("spec:\n", &format!("spec:\n  certificates: {certs}\n")))
    };
    let day = std::time::Duration::from_secs(86_400);
    let spec = with("{renewBefore: 30d}").unwrap();
    assert_eq!(spec.cert_renewal.renew_before, 30 * day);
    assert!(spec.cert_renewal.auto_renew);
    assert_eq!(spec.certificates, CertDistribution::UploadCerts);
    assert_eq!(
        with("{renewBefore: 48h, autoRenew: false}")
            .unwrap()
            .cert_renewal,
        CertRenewal {
            renew_before: 2 * day,
            auto_renew: false
        }
    );
    for bad in ["0s", "365d", "2y", "soon", "-3d"] {
        let err = with(&format!("{{renewBefore: '{bad}'}}")).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{bad}: {err}");
        assert_eq!(err.errors[0].path, "spec.certificates.renewBefore", "{bad}");
        assert!(err.errors[0].message.contains("30d"), "{bad}: {err}");
    }
}

/// Every `src/spec_corpus/*.yaml` starts with `# expect: <line>` comments:
/// the exact `Display` of the errors its parse must produce, in order.
#[test]
fn corpus_of_invalid_specs_gives_exactly_the_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/spec_corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let actual = match parse(&text) {
            Ok(spec) => format!("parsed fine: {spec:?}"),
            Err(e) => e.to_string(),
        };
        if actual != expected.join("\n") {
            failures.push(format!(
                "{}\n  expected:\n    {}\n  actual:\n    {}",
                file.file_name().unwrap().to_string_lossy(),
                expected.join("\n    "),
                actual.replace('\n', "\n    ")
            ));
        }
    }
    assert!(
        files.len() >= 20,
        "the corpus shrank to {} files",
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn etcd_snapshots_take_a_duration_and_a_count_and_name_the_field_when_wrong() {
    let with = |block: &str| {
        MINIMAL.replace(
            "spec:\n",
            &format!("spec:\n  etcd:\n    snapshots: {block}\n"),
        )
    };
    let spec = parse(&with("{every: 6h, keep: 14}")).unwrap();
    assert_eq!(
        spec.etcd_snapshots,
        Some(SnapshotSchedule {
            every: std::time::Duration::from_secs(6 * 3600),
            keep: 14
        })
    );
    let spec = parse(&with("{every: 2s}")).unwrap();
    assert_eq!(
        spec.etcd_snapshots,
        Some(SnapshotSchedule {
            every: std::time::Duration::from_secs(2),
            keep: DEFAULT_SNAPSHOT_KEEP
        })
    );
    assert_eq!(parse(MINIMAL).unwrap().etcd_snapshots, None);
    for (block, field, words) in [
        (
            "{every: often}",
            "spec.etcd.snapshots.every",
            "not a duration",
        ),
        ("{every: 10ms}", "spec.etcd.snapshots.every", "at least 1s"),
        ("{keep: 0}", "spec.etcd.snapshots.keep", "keep at least 1"),
        ("{keep: -3}", "spec.etcd.snapshots.keep", "out of range"),
    ] {
        let err = parse(&with(block)).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains(words), "{block}: {err}");
    }
    let err = parse(&with("{often: yes}")).unwrap_err().to_string();
    assert!(err.contains("often"), "{err}");
}

fn with_spec_lines(lines: &str) -> String {
    format!("{MINIMAL}{lines}")
}

#[test]
fn spares_and_remediation_have_defaults_and_parse_durations() {
    let spec = parse(MINIMAL).unwrap();
    assert!(spec.spares.is_empty());
    assert_eq!(spec.remediation, Remediation::default());
    assert!(!spec.remediation.enabled);
    assert_eq!(spec.remediation.unhealthy_after.as_secs(), 300);
    assert_eq!(spec.remediation.retry_period.as_secs(), 600);
    assert_eq!(spec.remediation.max_retry, 3);
    assert_eq!(spec.remediation.min_healthy_period.as_secs(), 3600);

    let spec = parse(&with_spec_lines(
        "  spares: [cp-9, cp-10]\n  remediation: {enabled: true, unhealthyAfter: 3s, maxInFlight: 1, retryPeriod: 1m, maxRetry: 2, minHealthyPeriod: 2h}\n",
    ))
    .unwrap();
    assert_eq!(spec.spares, ["cp-9", "cp-10"]);
    assert!(spec.remediation.enabled);
    assert_eq!(spec.remediation.unhealthy_after.as_secs(), 3);
    assert_eq!(spec.remediation.retry_period.as_secs(), 60);
    assert_eq!(spec.remediation.max_retry, 2);
    assert_eq!(spec.remediation.min_healthy_period.as_secs(), 7200);
}

#[test]
fn bad_spares_and_remediation_name_the_field_and_the_fix() {
    let err = parse(&with_spec_lines(
        "  spares: [cp-9, cp-9, w-1, Bad_Name]\n  remediation: {unhealthyAfter: soon, maxInFlight: 2, maxRetry: 0, retryPeriod: 0s}\n",
    ))
    .unwrap_err();
    let text = err.to_string();
    for want in [
        "spec.spares[1]: cp-9 is listed twice",
        "spec.spares[2]: w-1 is also in spec.nodes",
        "spec.spares[3]: ",
        "spec.remediation.unhealthyAfter: \"soon\" is not a duration",
        "spec.remediation.maxInFlight: 2 is not supported",
        "must be 1 for now",
        "spec.remediation.maxRetry: 0 is out of range",
        "spec.remediation.retryPeriod: 0s is too short",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let err = parse(&with_spec_lines("  remediation: {enable: true}\n")).unwrap_err();
    assert!(err.to_string().contains("spec.remediation"), "{err}");
}

#[test]
fn spares_must_be_enrolled() {
    let spec = parse(&with_spec_lines("  spares: [cp-9]\n")).unwrap();
    let errs = spec.check_enrolled(&["cp-1", "w-1"]);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "spec.spares[0]");
    assert!(spec.check_enrolled(&["cp-1", "w-1", "cp-9"]).is_empty());
}
