//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad command line: the message says which flag and why.
    #[error("{0}")]
    Flag(String),

    /// A URL this crate cannot request (only `http://` URLs are supported).
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },

    #[error("cannot read resources file {path}: {source}")]
    ResourcesRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid resources file {path}: {reason}")]
    ResourcesInvalid { path: PathBuf, reason: String },

    #[error("cannot open log file {path}: {source}")]
    Logfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot listen on {address}: {reason}")]
    Listen { address: String, reason: String },
}
