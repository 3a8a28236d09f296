//! `kubeadm token create | list | delete`.

use super::*;

pub(super) fn token(env: &NodeEnv, argv: &[String]) -> R<()> {
    match argv.first().map(String::as_str) {
        Some("create") => token_create(env, &argv[1..]),
        Some("list") => token_list(env, &argv[1..]),
        Some("delete") => token_delete(env, &argv[1..]),
        Some("generate") => {
            println!("{}", random_token());
            Ok(())
        }
        _ => Err(plain("missing subcommand; \"token\" is not meant to be run on its own\nTo see the stack trace of this error execute with --v=5 or higher")),
    }
}

fn token_create(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[
            value("ttl"),
            boolean("print-join-command"),
            value("certificate-key"),
            value("description"),
            value("usages"),
            value("groups"),
            value("config"),
            value("kubeconfig"),
        ],
    )?;
    let (specs, key) = match p.get("config") {
        // kubeadm creates the config's bootstrapTokens; a positional
        // [token] and the token flags apply only without a config (and the
        // flags are refused beside it).
        Some(file) => {
            let text = config_file(file, &mixed(&p))?;
            let init = config::parse_init(&text, &env.version()).map_err(plain)?;
            (init.tokens, None)
        }
        None => (vec![token_from_flags(&p)?], p.get("certificate-key")),
    };
    if let Some(k) = key {
        config::check_certificate_key(k).map_err(plain)?;
    }
    let kubeconfig_file = p.get("kubeconfig");
    let admin = admin_client(env, kubeconfig_file)?;
    let mut created = vec![];
    for spec in &specs {
        let tok = spec.token.clone().unwrap_or_else(random_token);
        record_secrets(env, [tok.as_str()]);
        create_token(&admin, &tok, spec, env.now()).map_err(plain)?;
        created.push(tok);
    }
    let tok = &created[0];
    if p.flag("print-join-command") {
        let path = host_file(env, kubeconfig_file.unwrap_or(ADMIN_CONF));
        let target = kubeconfig::load(env, &path)
            .map_err(|e| plain(format!("failed to load kubeconfig: {e}")))?;
        let endpoint = target.server.trim_start_matches("https://").to_string();
        let hash = pki::ca_cert_hash(target.ca_pem.as_deref().unwrap_or_default())
            .map_err(|e| plain(e.to_string()))?;
        let cmd = join_command(&endpoint, tok, &hash, key.is_some(), key)
            .replace("\\\n", "")
            .replace('\t', "");
        println!("{cmd}");
    } else {
        println!("{tok}");
    }
    Ok(())
}

/// The one token `kubeadm token create [token] --ttl ...` describes
/// without a config file.
fn token_from_flags(p: &Parsed) -> R<TokenSpec> {
    let tok = match p.positional.first() {
        Some(t) if !config::valid_token(t) => {
            return Err(plain(format!("the bootstrap token \"{t}\" was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\"")))
        }
        Some(t) => Some(t.clone()),
        None => None,
    };
    let ttl = match p.get("ttl") {
        Some(s) => clock::parse_go_duration(s).ok_or_else(|| {
            plain(format!(
                "invalid argument \"{s}\" for \"--ttl\" flag: time: invalid duration \"{s}\""
            ))
        })?,
        None => Duration::from_secs(24 * 3600),
    };
    let usages = {
        let u = p.all("usages");
        if u.is_empty() {
            vec!["signing".into(), "authentication".into()]
        } else {
            u
        }
    };
    let groups = {
        let g = p.all("groups");
        if g.is_empty() {
            vec!["system:bootstrappers:kubeadm:default-node-token".into()]
        } else {
            g
        }
    };
    Ok(TokenSpec {
        token: tok,
        ttl,
        usages,
        groups,
        description: p.get("description").unwrap_or_default().to_string(),
    })
}

fn token_list(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[
            short(value("output"), 'o'),
            value("kubeconfig"),
            value("config"),
            boolean("allow-missing-template-keys"),
        ],
    )?;
    let admin = admin_client(env, p.get("kubeconfig"))?;
    let list = client::get(&admin, "/api/v1/namespaces/kube-system/secrets?fieldSelector=type%3Dbootstrap.kubernetes.io%2Ftoken")
        .map_err(|e| plain(format!("failed to list bootstrap tokens: {e}")))?;
    let now = env.now();
    let mut rows = vec![];
    let mut objs = vec![];
    for s in list["items"].as_array().cloned().unwrap_or_default() {
        let id = secret_text(&s, "token-id");
        let token = format!("{id}.{}", secret_text(&s, "token-secret"));
        let exp = secret_text(&s, "expiration");
        let ttl = match clock::parse_rfc3339(&exp) {
            Some(t) => t
                .duration_since(now)
                .map(clock::human_duration)
                .unwrap_or_else(|_| "<invalid>".into()),
            None => "<forever>".into(),
        };
        let mut usages: Vec<String> = s["data"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix("usage-bootstrap-"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        usages.sort();
        let groups = secret_text(&s, "auth-extra-groups");
        let desc = secret_text(&s, "description");
        rows.push([
            token.clone(),
            ttl,
            if exp.is_empty() {
                "<never>".into()
            } else {
                exp.clone()
            },
            if usages.is_empty() {
                "<none>".into()
            } else {
                usages.join(",")
            },
            if desc.is_empty() {
                "<none>".into()
            } else {
                desc.clone()
            },
            if groups.is_empty() {
                "<none>".into()
            } else {
                groups.clone()
            },
        ]);
        let mut o = json!({
            "kind": "BootstrapToken",
            "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
            "creationTimestamp": null,
            "token": token,
            "description": desc,
            "usages": usages,
            "groups": groups.split(',').filter(|g| !g.is_empty()).collect::<Vec<_>>(),
        });
        if !exp.is_empty() {
            o["expires"] = json!(exp);
        }
        objs.push(o);
    }
    match p.get("output") {
        Some("json") => {
            for o in objs {
                println!("{}", serde_json::to_string_pretty(&o).unwrap_or_default());
            }
        }
        Some("yaml") => {
            for o in objs {
                print!("{}", serde_yaml::to_string(&o).unwrap_or_default());
                println!("---");
            }
        }
        None | Some("text") => {
            if rows.is_empty() {
                return Ok(());
            }
            let header = [
                "TOKEN",
                "TTL",
                "EXPIRES",
                "USAGES",
                "DESCRIPTION",
                "EXTRA GROUPS",
            ]
            .map(String::from);
            print!("{}", table(&header, &rows));
        }
        Some(o) => return Err(plain(format!("invalid output format: {o}"))),
    }
    Ok(())
}

/// Columns padded like Go's tabwriter with kubectl's settings.
pub fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut w = [0usize; N];
    for r in std::iter::once(header).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}", width = w[i] + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn token_delete(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &[value("kubeconfig")])?;
    if p.positional.is_empty() {
        return Err(plain("missing argument; 'token delete' is missing token of form \"[a-z0-9]{6}\" or \"[a-z0-9]{6}\\.[a-z0-9]{16}\""));
    }
    let admin = admin_client(env, p.get("kubeconfig"))?;
    for t in &p.positional {
        let id = t.split('.').next().unwrap_or_default();
        let ok_id = id.len() == 6
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok_id {
            return Err(plain("given token didn't match pattern \"[a-z0-9]{6}\" or \"[a-z0-9]{6}\\.[a-z0-9]{16}\""));
        }
        let name = format!("bootstrap-token-{id}");
        client::delete(
            &admin,
            &format!("/api/v1/namespaces/kube-system/secrets/{name}"),
        )
        .map_err(|e| plain(format!("failed to delete bootstrap token {id:?}: {e}")))?;
        println!("bootstrap token \"{id}\" deleted");
    }
    Ok(())
}
