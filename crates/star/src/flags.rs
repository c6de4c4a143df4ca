//! Hand-rolled flag parsing shared by both binaries.
//!
//! Accepts `--flag=value` and `--flag value`; the last occurrence of a flag
//! wins. Unknown flags and positional arguments are errors, so a typo never
//! goes unnoticed. `-h` / `--help` asks for the usage text.

use std::collections::HashMap;
use std::time::Duration;

use crate::Error;

/// The outcome of parsing a command line.
#[derive(Debug, PartialEq)]
pub enum Parsed<T> {
    Run(T),
    Help,
}

/// Flag values by name (without the leading `--`).
#[derive(Debug, Default)]
pub struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Parses `args` (without the program name), accepting only the flags in
    /// `known`. Returns `None` when help was asked for.
    pub fn parse<I, S>(args: I, known: &[&str]) -> Result<Option<Flags>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values = HashMap::new();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(Error::Flag(format!("unexpected argument {arg:?}")));
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let name = flag.to_string();
                    if !known.contains(&name.as_str()) {
                        return Err(Error::Flag(format!("unknown flag --{name}")));
                    }
                    match args.next() {
                        Some(value) if !value.starts_with("--") => (name, value),
                        _ => return Err(Error::Flag(format!("flag --{name} needs a value"))),
                    }
                }
            };
            if !known.contains(&name.as_str()) {
                return Err(Error::Flag(format!("unknown flag --{name}")));
            }
            values.insert(name, value);
        }
        Ok(Some(Flags { values }))
    }

    /// The raw value of a flag, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A string flag with a default.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    /// A TCP port flag with a default.
    pub fn port(&self, name: &str, default: u16) -> Result<u16, Error> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse::<u16>().map_err(|_| {
                Error::Flag(format!("--{name}: {v:?} is not a port number (0-65535)"))
            }),
        }
    }

    /// A positive number of seconds (fractions allowed) with a default.
    pub fn seconds(&self, name: &str, default: u64) -> Result<Duration, Error> {
        let Some(v) = self.get(name) else {
            return Ok(Duration::from_secs(default));
        };
        let bad = || {
            Error::Flag(format!(
                "--{name}: {v:?} is not a positive number of seconds"
            ))
        };
        let secs: f64 = v.trim().parse().map_err(|_| bad())?;
        if !(secs > 0.0 && secs <= 86_400.0) {
            return Err(bad());
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

/// Splits a comma-separated list, trimming blanks and dropping empty items.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["urls", "http-port", "http-probe-seconds", "logfile"];

    fn parse(args: &[&str]) -> Result<Option<Flags>, Error> {
        Flags::parse(args.iter().copied(), KNOWN)
    }

    #[test]
    fn both_spellings_and_last_wins() {
        let f = parse(&["--urls=a,b", "--http-port", "9100", "--http-port=9200"])
            .unwrap()
            .unwrap();
        assert_eq!(f.get("urls"), Some("a,b"));
        assert_eq!(f.port("http-port", 1).unwrap(), 9200);
    }

    #[test]
    fn value_with_equals_sign_is_kept_whole() {
        let f = parse(&["--urls=http://a/x?y=1"]).unwrap().unwrap();
        assert_eq!(f.get("urls"), Some("http://a/x?y=1"));
        let f = parse(&["--urls", "http://a/x?y=1"]).unwrap().unwrap();
        assert_eq!(f.get("urls"), Some("http://a/x?y=1"));
    }

    #[test]
    fn empty_value_is_allowed_with_equals() {
        let f = parse(&["--urls="]).unwrap().unwrap();
        assert_eq!(f.get("urls"), Some(""));
    }

    #[test]
    fn errors() {
        assert!(matches!(parse(&["--nope=1"]), Err(Error::Flag(m)) if m.contains("--nope")));
        assert!(matches!(parse(&["--nope", "1"]), Err(Error::Flag(m)) if m.contains("--nope")));
        assert!(matches!(parse(&["stray"]), Err(Error::Flag(m)) if m.contains("stray")));
        assert!(matches!(parse(&["--urls"]), Err(Error::Flag(m)) if m.contains("needs a value")));
        assert!(
            matches!(parse(&["--urls", "--logfile=x"]), Err(Error::Flag(m)) if m.contains("needs a value"))
        );
        let f = parse(&["--http-port=99999", "--http-probe-seconds=0"])
            .unwrap()
            .unwrap();
        assert!(f.port("http-port", 1).is_err());
        assert!(f.seconds("http-probe-seconds", 5).is_err());
        for bad in ["-1", "abc", "NaN", "inf", ""] {
            let f = parse(&[&format!("--http-probe-seconds={bad}")])
                .unwrap()
                .unwrap();
            assert!(
                f.seconds("http-probe-seconds", 5).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn help() {
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--urls=a", "-h"]).unwrap().is_none());
    }

    #[test]
    fn defaults_and_values() {
        let f = parse(&[]).unwrap().unwrap();
        assert_eq!(f.port("http-port", 9000).unwrap(), 9000);
        assert_eq!(
            f.seconds("http-probe-seconds", 5).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(f.string("urls", "x"), "x");
        let f = parse(&["--http-probe-seconds", "0.5"]).unwrap().unwrap();
        assert_eq!(
            f.seconds("http-probe-seconds", 5).unwrap(),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn split_list_drops_empty_items() {
        assert_eq!(split_list(""), Vec::<String>::new());
        assert_eq!(split_list(",,"), Vec::<String>::new());
        assert_eq!(
            split_list(",http://a:9000/status,, http://b:9000/status ,"),
            vec!["http://a:9000/status", "http://b:9000/status"]
        );
    }
}
