//! The systemd notification protocol (`sd_notify`): `READY=1`, `STATUS=…`, `WATCHDOG=1` and
//! `STOPPING=1` as datagrams to `$NOTIFY_SOCKET`. Without that variable every call is a no-op,
//! so the agent behaves the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// Tokio's clock, so that tests with paused time see the watchdog's view of progress.
use tokio::time::Instant;

#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
    /// When the work last showed progress, in milliseconds since `epoch`.
    alive_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::none()
    }
}

impl Notifier {
    /// A notifier that sends nothing, for one-shot commands and tests.
    pub fn none() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            alive_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A notifier that sends to the socket at `path` with a watchdog of `watchdog`, as systemd
    /// would set it up.
    pub fn to_socket(path: &std::path::Path, watchdog: Duration) -> std::io::Result<Notifier> {
        let addr = std::os::unix::net::SocketAddr::from_pathname(path)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket: Some((socket, addr)),
            watchdog: Some(watchdog),
            ..Notifier::none()
        })
    }

    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honouring `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let addr = address(path.to_str()?).ok()?;
            let socket = UnixDatagram::unbound().ok()?;
            // A notification that cannot go out at once is dropped: a full queue at systemd's
            // end must never block the agent's loop.
            socket.set_nonblocking(true).ok()?;
            Some((socket, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier {
            socket,
            watchdog,
            ..Notifier::none()
        }
    }

    /// Says that the work moves on (bytes arrived, a control was applied, a step began); the
    /// watchdog is fed only while it does.
    pub fn alive(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.alive_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the work last showed progress.
    pub fn since_alive(&self) -> Duration {
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_millis(self.alive_ms.load(Ordering::Relaxed)))
    }

    /// How often to send `WATCHDOG=1`: half the watchdog timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        self.watchdog.map(|w| w / 2)
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.alive();
        self.send(&format!("STATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: progress is saved");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                log::debug!("cannot notify systemd: {e}");
            }
        }
    }
}

/// A filesystem path, or `@name` for Linux's abstract namespace.
fn address(path: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("abstract socket {name}"),
        ));
    }
    std::os::unix::net::SocketAddr::from_pathname(path)
}
