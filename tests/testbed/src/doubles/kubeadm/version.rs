//! The `kubeadm version` command.

use super::*;

pub(super) fn version(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &[short(value("output"), 'o')])?;
    let v = env.version();
    let (major, minor) = crate::kube::minor_of(&v).unwrap_or((1, 0));
    let info = json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "gitVersion": v,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T17:59:15Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    });
    match p.get("output") {
        Some("short") => println!("{v}"),
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"clientVersion": info})).unwrap_or_default()
        ),
        Some("yaml") => print!(
            "{}",
            serde_yaml::to_string(&json!({"clientVersion": info})).unwrap_or_default()
        ),
        None | Some("") => println!(
            "kubeadm version: &version.Info{{Major:\"{major}\", Minor:\"{minor}\", GitVersion:\"{v}\", GitCommit:\"0000000000000000000000000000000000000000\", GitTreeState:\"clean\", BuildDate:\"2024-12-11T17:59:15Z\", GoVersion:\"go1.23.3\", Compiler:\"gc\", Platform:\"linux/amd64\"}}"
        ),
        Some(o) => return Err(plain(format!("invalid output format: {o}"))),
    }
    Ok(())
}
