//! Install windows: the times of day (local time, from the system's time zone) when the agent may
//! put a new version in place. Downloads and patching happen whenever a check finds work; only
//! the install waits.
//!
//! The windows are pure values; the local time of day comes from [`local_minute`], which asks the
//! C library (it reads `TZ` and `/etc/localtime`, as every other program on the robot does).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

const DAY: u32 = 24 * 60;

/// `"01:00-05:00"`: from the first time of day (included) to the second (excluded). A window whose
/// end is before its start crosses midnight; `"00:00-24:00"` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight.
    start: u32,
    end: u32,
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("`{text}` is not a window such as \"01:00-05:00\"");
        let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end || start == DAY {
            return Err(format!("`{text}` is an empty window"));
        }
        Ok(Window { start, end })
    }

    /// Whether the window holds `minute` (minutes after local midnight).
    pub fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Minutes from `minute` until the window next opens (0 when it is open).
    fn opens_in(&self, minute: u32) -> u32 {
        if self.contains(minute) {
            0
        } else {
            (self.start + DAY - minute) % DAY
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Window::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How long until one of `windows` is open, at `minute` after local midnight and `second` into
/// that minute: zero when one is open (or none is configured).
pub fn wait(windows: &[Window], minute: u32, second: u32) -> Duration {
    let Some(minutes) = windows.iter().map(|w| w.opens_in(minute)).min() else {
        return Duration::ZERO;
    };
    if minutes == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(u64::from(minutes) * 60 - u64::from(second.min(59)))
}

/// The windows as the config wrote them, for messages.
pub fn describe(windows: &[Window]) -> String {
    windows
        .iter()
        .map(Window::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The local time of day at Unix time `unix`: minutes after midnight and the second within the
/// minute. A time the C library cannot convert counts as midnight.
// The libc crate marks `time_t` deprecated on musl, whose width it will change; it is the type
// that localtime_r takes on every target, whatever its width.
#[allow(unsafe_code, deprecated)]
pub fn local_minute(unix: u64) -> (u32, u32) {
    let t = libc::time_t::try_from(unix).unwrap_or(libc::time_t::MAX);
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for the
    // call, and localtime_r (unlike localtime) keeps no pointer to them and is thread-safe.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return (0, 0);
        }
        tm
    };
    let clamp = |v: libc::c_int, max: u32| u32::try_from(v).unwrap_or(0).min(max);
    (
        clamp(tm.tm_hour, 23) * 60 + clamp(tm.tm_min, 59),
        clamp(tm.tm_sec, 59),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str) -> Window {
        Window::parse(text).unwrap()
    }

    #[test]
    fn windows_parse_and_refuse_nonsense() {
        assert_eq!(w("01:00-05:00").to_string(), "01:00-05:00");
        assert_eq!(w(" 1:30 - 5:00 ").to_string(), "01:30-05:00");
        assert_eq!(w("00:00-24:00").to_string(), "00:00-24:00");
        for bad in [
            "",
            "1-5",
            "01:00",
            "25:00-01:00",
            "01:60-02:00",
            "01:00-01:00",
            "24:00-01:00",
            "a:bc-01:00",
            "01:00-05:00-06:00",
            "001:00-02:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_window_may_cross_midnight() {
        let night = w("22:00-02:00");
        assert!(night.contains(23 * 60));
        assert!(night.contains(0));
        assert!(night.contains(60 + 59));
        assert!(!night.contains(2 * 60));
        assert!(!night.contains(12 * 60));
        assert!(w("00:00-24:00").contains(23 * 60 + 59));
    }

    #[test]
    fn the_wait_runs_to_the_nearest_opening() {
        let windows = [w("01:00-05:00"), w("13:00-14:00")];
        // Open: no wait.
        assert_eq!(wait(&windows, 2 * 60, 30), Duration::ZERO);
        // 00:59:30 waits 30 s; 05:00:00 waits until 13:00; 14:00 waits until 01:00 next day.
        assert_eq!(wait(&windows, 59, 30), Duration::from_secs(30));
        assert_eq!(wait(&windows, 5 * 60, 0), Duration::from_secs(8 * 3600));
        assert_eq!(wait(&windows, 14 * 60, 0), Duration::from_secs(11 * 3600));
        // No window configured: always open.
        assert_eq!(wait(&[], 14 * 60, 0), Duration::ZERO);
        assert_eq!(describe(&windows), "01:00-05:00, 13:00-14:00");
    }
}
