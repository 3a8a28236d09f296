//! Injected time. Everything that expires (tokens, certificates, heartbeats)
//! asks a [`Clock`], so tests can cross an expiry without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until moved; for unit tests.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::Mutex<Duration>);

impl ManualClock {
    pub fn at_unix_ms(ms: u64) -> Self {
        ManualClock(std::sync::Mutex::new(Duration::from_millis(ms)))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// "3s ago", "in 25m", "never": for tables that humans read.
pub fn relative(now: SystemTime, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".to_string();
    }
    let now_ms = unix_ms(now);
    let (delta, past) = if now_ms >= then_ms {
        (now_ms - then_ms, true)
    } else {
        (then_ms - now_ms, false)
    };
    let secs = delta / 1000;
    let text = if secs < 120 {
        format!("{secs}s")
    } else if secs < 2 * 3600 {
        format!("{}m", secs / 60)
    } else if secs < 2 * 86400 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86400)
    };
    if past {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// RFC 3339 in UTC, for JSON output; empty for 0.
pub fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    humantime::format_rfc3339_seconds(from_unix_ms(ms)).to_string()
}

/// A duration the way kubeadm prints residual times (apimachinery's
/// `ShortHumanDuration`): the largest whole unit, `45s`, `5m`, `23h`, `364d`,
/// `9y`; negative counts as zero.
pub fn short_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else if s < 365 * 86_400 {
        format!("{}d", s / 86_400)
    } else {
        format!("{}y", s / (365 * 86_400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = from_unix_ms(100_000_000);
        assert_eq!(relative(now, 0), "never");
        assert_eq!(relative(now, 100_000_000 - 3_000), "3s ago");
        assert_eq!(relative(now, 100_000_000 + 25 * 60_000), "in 25m");
        assert_eq!(relative(now, 100_000_000 - 5 * 3_600_000), "5h ago");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix_ms(1000);
        assert_eq!(unix_ms(c.now()), 1000);
        c.advance(Duration::from_secs(2));
        assert_eq!(unix_ms(c.now()), 3000);
    }
}

/// Serde for durations written as humans write them ("10s", "30m", "24h").
pub mod serde_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like 10s, 30m or 24h"
            ))
        })
    }
}
