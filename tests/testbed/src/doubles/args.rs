//! Command-line parsing in the style of cobra/pflag, which kubeadm and
//! kubectl use: `--flag=value`, `--flag value`, boolean `--flag`, a few
//! shorthands, and cobra's `unknown flag` error.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub positional: Vec<String>,
    pub values: BTreeMap<String, Vec<String>>,
}

impl Parsed {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.values
            .get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, k: &str) -> Vec<String> {
        self.values
            .get(k)
            .map(|v| {
                v.iter()
                    .flat_map(|x| x.split(','))
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true"))
    }

    pub fn has(&self, k: &str) -> bool {
        self.values.contains_key(k)
    }

    /// Flags given other than those in `allowed`.
    pub fn others(&self, allowed: &[&str]) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

/// A flag a command accepts: long name, optional one-letter shorthand,
/// whether it is boolean.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    pub boolean: bool,
}

pub const fn value(long: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        boolean: false,
    }
}

pub const fn boolean(long: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        boolean: true,
    }
}

pub const fn short(f: Flag, c: char) -> Flag {
    Flag {
        long: f.long,
        short: Some(c),
        boolean: f.boolean,
    }
}

pub fn parse(args: &[String], flags: &[Flag]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut only_positional = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_positional || a == "-" || !a.starts_with('-') {
            p.positional.push(a.clone());
            continue;
        }
        if a == "--" {
            only_positional = true;
            continue;
        }
        let (name, inline) = if let Some(long) = a.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            }
        } else {
            let s = &a[1..];
            let c = s.chars().next().unwrap_or('-');
            let rest = &s[c.len_utf8()..];
            let f = flags
                .iter()
                .find(|f| f.short == Some(c))
                .ok_or_else(|| format!("unknown shorthand flag: '{c}' in {a}"))?;
            let inline = if rest.is_empty() {
                None
            } else {
                Some(rest.trim_start_matches('=').to_string())
            };
            (f.long.to_string(), inline)
        };
        let f = flags
            .iter()
            .find(|f| f.long == name)
            .ok_or_else(|| format!("unknown flag: --{name}"))?;
        let v = if f.boolean {
            inline.unwrap_or_else(|| "true".into())
        } else {
            match inline {
                Some(v) => v,
                None => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| format!("flag needs an argument: --{name}"))?;
                    i += 1;
                    v.clone()
                }
            }
        };
        p.values.entry(name).or_default().push(v);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pflag_forms_parse() {
        let flags = [
            value("config"),
            boolean("upload-certs"),
            short(value("output"), 'o'),
            short(boolean("force"), 'f'),
            value("discovery-token-ca-cert-hash"),
        ];
        let a: Vec<String> = [
            "join",
            "10.0.0.1:6443",
            "--config=x",
            "--upload-certs",
            "-o",
            "json",
            "-f",
            "--discovery-token-ca-cert-hash",
            "sha256:a",
            "--discovery-token-ca-cert-hash=sha256:b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse(&a, &flags).unwrap();
        assert_eq!(p.positional, ["join", "10.0.0.1:6443"]);
        assert_eq!(p.get("config"), Some("x"));
        assert!(p.flag("upload-certs") && p.flag("force"));
        assert_eq!(p.get("output"), Some("json"));
        assert_eq!(
            p.all("discovery-token-ca-cert-hash"),
            ["sha256:a", "sha256:b"]
        );
        assert_eq!(
            parse(&["--nope".to_string()], &flags).unwrap_err(),
            "unknown flag: --nope"
        );
    }
}
