//! The testbed clock: real time plus an offset that a test can move forward,
//! so a 2 h or 24 h expiry passes in seconds while everything keeps running.
//!
//! The offset lives in `<world dir>/clock-offset` (whole seconds, may be
//! negative). Every double reads it on every use, so a change takes effect at
//! once in every running process.
//!
//! The kubeadm double issues certificates at this clock (valid from an hour
//! before the earlier of real and testbed time until testbed time plus a
//! year, ten for CAs), while real etcd and every TLS client judge them by the
//! real clock. To age a cluster, set the offset negative before building it
//! (a cluster "built 345 days ago") and set it back to 0 afterwards: its
//! certificates then truly expire in 20 days, for every process alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The name of the offset file inside the world (sandbox) dir.
pub const OFFSET_FILE: &str = "clock-offset";

/// The env var naming the world dir; the testbed sets it on every agent and
/// kubelet double, and the doubles inherit it.
pub const WORLD_DIR_ENV: &str = "KH_TESTBED_DIR";

/// The world dir from the environment, if set.
pub fn world_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(WORLD_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The offset in seconds recorded in `world_dir` (0 when there is none).
pub fn offset_secs(world_dir: Option<&Path>) -> i64 {
    world_dir
        .and_then(|d| std::fs::read_to_string(d.join(OFFSET_FILE)).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records a new offset atomically, so a concurrent reader never sees half a
/// number.
pub fn set_offset_secs(world_dir: &Path, secs: i64) -> std::io::Result<()> {
    let tmp = world_dir.join(format!("{OFFSET_FILE}.tmp"));
    std::fs::write(&tmp, format!("{secs}\n"))?;
    std::fs::rename(tmp, world_dir.join(OFFSET_FILE))
}

/// Real time shifted by the offset of `world_dir`.
pub fn now_in(world_dir: Option<&Path>) -> SystemTime {
    shift(SystemTime::now(), offset_secs(world_dir))
}

/// Testbed time for a double: real time shifted by `$KH_TESTBED_DIR`'s offset.
pub fn now() -> SystemTime {
    now_in(world_dir_from_env().as_deref())
}

fn shift(t: SystemTime, secs: i64) -> SystemTime {
    if secs >= 0 {
        t + Duration::from_secs(secs as u64)
    } else {
        t - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

pub fn from_unix_secs(secs: i64) -> SystemTime {
    shift(UNIX_EPOCH, secs)
}

/// `2024-05-01T12:00:00Z`, as Kubernetes prints timestamps.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (fractions and offsets other than Z are
/// not produced by the testbed and are refused).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(from_unix_secs(days * 86_400 + h * 3600 + mi * 60 + se))
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a Go duration as kubeadm's flags take it: `24h`, `2h0m0s`, `90m`,
/// `30s`, `1h30m`, or `0` (which kubeadm reads as "never expires").
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[u_end..];
        total += n * unit;
    }
    Some(Duration::from_secs_f64(total))
}

/// A duration as Go prints it: `24h0m0s`, `1h59m30s`, `45s`.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// A duration the way kubectl prints ages and kubeadm prints TTLs: the
/// largest unit, e.g. `23h`, `5m`, `40s`, `3d`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s}s")
    } else if s < 3600 * 2 {
        format!("{}m", s / 60)
    } else if s < 86_400 * 2 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for secs in [0i64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = from_unix_secs(secs);
            let text = rfc3339(t);
            assert_eq!(parse_rfc3339(&text), Some(t), "{text}");
        }
        assert_eq!(rfc3339(from_unix_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn go_durations_parse_and_print() {
        assert_eq!(parse_go_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("2h0m0s"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(go_duration(Duration::from_secs(86_400)), "24h0m0s");
        assert_eq!(human_duration(Duration::from_secs(23 * 3600 + 59)), "23h");
    }

    #[test]
    fn the_offset_moves_time() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(offset_secs(Some(dir.path())), 0);
        set_offset_secs(dir.path(), 7200).unwrap();
        let delta = unix_secs(now_in(Some(dir.path()))) - unix_secs(SystemTime::now());
        assert!((7199..=7201).contains(&delta), "{delta}");
    }
}
