//! The real `etcdctl` (v3 API) as the kubeadm double's etcd client. It
//! stands in for the Go etcd client inside kubeadm, which dials once per
//! operation (membership changes, `member list`): the errors it prints are
//! etcd's own ("context deadline exceeded", "etcdserver: too many learner
//! members in cluster", ...). The apiserver double, which makes many
//! requests, keeps an in-process client instead (`etcd_client`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::ETCDCTL_BIN;

#[derive(Debug, Clone)]
pub struct Etcdctl {
    pub endpoints: Vec<String>,
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub command_timeout: Duration,
    pub dial_timeout: Duration,
}

/// One member from `member list -w json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Member {
    /// etcdctl prints IDs in decimal in JSON but takes them in hex.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id)
    }
}

impl Etcdctl {
    pub fn new(endpoints: Vec<String>, cacert: PathBuf, cert: PathBuf, key: PathBuf) -> Etcdctl {
        Etcdctl {
            endpoints,
            cacert,
            cert,
            key,
            command_timeout: Duration::from_secs(3),
            dial_timeout: Duration::from_secs(1),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ETCDCTL_BIN);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints.join(",")))
            .arg(format!("--cacert={}", self.cacert.display()))
            .arg(format!("--cert={}", self.cert.display()))
            .arg(format!("--key={}", self.key.display()))
            .arg(format!(
                "--dial-timeout={}ms",
                self.dial_timeout.as_millis()
            ))
            .arg(format!(
                "--command-timeout={}ms",
                self.command_timeout.as_millis()
            ))
            .args(args);
        cmd
    }

    /// Runs etcdctl; `Err` carries etcd's error text without etcdctl's
    /// `Error: ` prefix and without its JSON log lines.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {ETCDCTL_BIN}: {e}"))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(data);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("etcdctl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(error_text(&String::from_utf8_lossy(&out.stderr), &stdout))
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let v = self.get_json(key, false)?;
        Ok(v.into_iter().next().map(|(_, val)| val))
    }

    /// Every key under `prefix` with its value.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.get_json(prefix, true)
    }

    fn get_json(&self, key: &str, prefix: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut args = vec!["get", key, "-w", "json"];
        if prefix {
            args.push("--prefix");
        }
        let out = self.run(&args)?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("etcdctl printed no JSON: {e}"))?;
        Ok(v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| {
                        let k = super::unb64(kv["key"].as_str()?)?;
                        let val = super::unb64(kv["value"].as_str().unwrap_or_default())?;
                        Some((String::from_utf8_lossy(&k).into_owned(), val))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.run_stdin(&["put", key], Some(value)).map(|_| ())
    }

    pub fn del(&self, key: &str) -> Result<bool, String> {
        let out = self.run(&["del", key])?;
        Ok(out.trim() != "0")
    }

    pub fn members(&self) -> Result<Vec<Member>, String> {
        let out = self.run(&["member", "list", "-w", "json"])?;
        Ok(parse_members(&out))
    }
}

/// etcd's error from etcdctl's stderr: the last `Error: ...` line, or the
/// last line that is not a JSON log record.
pub fn error_text(stderr: &str, stdout: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(l) = lines.iter().rev().find(|l| l.starts_with("Error:")) {
        return l.trim_start_matches("Error:").trim().to_string();
    }
    if let Some(l) = lines.iter().rev().find(|l| !l.starts_with('{')) {
        return l.to_string();
    }
    // `endpoint health` reports unhealthy endpoints in its own format.
    let all = format!("{stdout}\n{stderr}");
    all.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("etcdctl failed")
        .to_string()
}

pub fn parse_members(json: &str) -> Vec<Member> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return vec![];
    };
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| Member {
                    id: m["ID"].as_u64().unwrap_or(0),
                    name: m["name"].as_str().unwrap_or_default().to_string(),
                    peer_urls: strings(&m["peerURLs"]),
                    client_urls: strings(&m["clientURLs"]),
                    is_learner: m["isLearner"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_members_parse() {
        let stderr = "{\"level\":\"warn\",\"msg\":\"retrying\"}\nError: etcdserver: too many learner members in cluster\n";
        assert_eq!(
            error_text(stderr, ""),
            "etcdserver: too many learner members in cluster"
        );
        let json = r#"{"header":{"cluster_id":1},"members":[{"ID":12345678901234567890,"name":"cp-1","peerURLs":["https://127.0.0.2:2380"],"clientURLs":["https://127.0.0.2:2379"]},{"ID":17,"peerURLs":["https://127.0.0.3:2380"],"isLearner":true}]}"#;
        let m = parse_members(json);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].hex_id(), "ab54a98ceb1f0ad2");
        assert!(m[1].is_learner && m[1].name.is_empty());
    }
}
