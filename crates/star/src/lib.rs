//! Star: the demo workloads of netmod.
//!
//! * `star-probe` requests a list of URLs every interval and reports, on
//!   `GET /status`, which of them answered.
//! * `star-collect` fetches the `/status` of every probe it knows (its
//!   "resources") every interval, serves the answers as JSON and shows them as
//!   a live graph of who reaches whom at `GET /`.
//!
//! Both keep the command lines and REST shapes of the 2015 originals (see
//! `shared/reference/star-api.md`). Everything here is plain threads and
//! blocking I/O: `ureq` with one hard deadline per request ([`client`]) and
//! `tiny_http` for the servers ([`server`]).

pub mod client;
pub mod collect;
pub mod error;
pub mod flags;
pub mod log;
pub mod probe;
pub mod server;

pub use error::Error;

use std::time::Duration;

/// How long one request to a target may take in total (resolve, connect,
/// send, read), given the polling interval: a third of the interval, at most
/// one second and at least 50 ms. Far below the interval, so every round
/// finishes before the next one is due even when a target is blackholed.
pub fn request_timeout(interval: Duration) -> Duration {
    (interval / 3).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Sleeps until `deadline`; returns at once if it has passed.
pub(crate) fn sleep_until(deadline: std::time::Instant) {
    let now = std::time::Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeout_stays_well_under_the_interval() {
        assert_eq!(
            request_timeout(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(1)),
            Duration::from_secs(1) / 3
        );
        assert_eq!(
            request_timeout(Duration::from_millis(60)),
            Duration::from_millis(50)
        );
        for secs in [1u64, 2, 3, 5, 10, 60] {
            let interval = Duration::from_secs(secs);
            assert!(request_timeout(interval) * 3 <= interval);
        }
    }
}
