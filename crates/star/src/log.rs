//! A minimal line logger: to the `--logfile` (appending) or to stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;

static LOGFILE: OnceLock<Mutex<File>> = OnceLock::new();

/// Sends log lines to `path` (created or appended to) from now on; without a
/// path, lines go to stderr.
pub fn init(path: Option<&Path>) -> Result<(), Error> {
    let Some(path) = path else { return Ok(()) };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Logfile {
            path: path.to_path_buf(),
            source,
        })?;
    // A second init keeps the first file: there is only one per process.
    let _ = LOGFILE.set(Mutex::new(file));
    Ok(())
}

/// Writes one timestamped line. Failures to log are ignored.
pub fn write(args: std::fmt::Arguments<'_>) {
    let line = format!("{} {}\n", timestamp(SystemTime::now()), args);
    match LOGFILE.get() {
        Some(file) => {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = file.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// Logs one line: `logln!("probing {} targets", n)`.
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => { $crate::log::write(format_args!($($arg)*)) };
}

/// RFC 3339 UTC time with milliseconds, e.g. `2015-10-21T07:28:00.000Z`.
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_445_412_480_123);
        assert_eq!(timestamp(t), "2015-10-21T07:28:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000Z");
    }
}
