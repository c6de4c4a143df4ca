//! The crate's one error type, with the failed step chained in front of its cause.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object to create exists already: a host interface name, a container
    /// interface, or an nftables set created with `Change::CreateSet`.
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    /// The request itself is unusable (bad name, wrong address family, ...);
    /// nothing was changed.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A system call, a netlink request or a /proc/sys access failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A step of a larger operation failed (which step, on which object).
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn last_os(context: impl Into<String>) -> Error {
        Error::io(context, io::Error::last_os_error())
    }

    pub(crate) fn errno(context: impl Into<String>, errno: i32) -> Error {
        Error::io(context, io::Error::from_raw_os_error(errno))
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The innermost error, below every `Step`.
    pub fn root(&self) -> &Error {
        match self {
            Error::Step { source, .. } => source.root(),
            other => other,
        }
    }

    /// The OS / kernel error number at the root of the chain, if any.
    pub fn os_error(&self) -> Option<i32> {
        match self.root() {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self.root(), Error::AlreadyExists { .. })
    }

    /// The kernel knows no such object (ENOENT): a set or chain that
    /// another process deleted meanwhile, say.
    pub fn is_not_found(&self) -> bool {
        self.os_error() == Some(libc::ENOENT)
    }
}

/// Puts the name of the failed step in front of an error.
pub(crate) trait Context<T> {
    fn context(self, step: impl Into<String>) -> Result<T>;
    fn with_context(self, step: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, step: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step.into(),
            source: Box::new(e),
        })
    }

    fn with_context(self, step: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step(),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn steps_chain_and_keep_the_root() {
        let e: Result<()> = Err(Error::errno("RTM_NEWADDR", libc::EEXIST));
        let e = e.context("address 10.0.0.5/32 on eth0").unwrap_err();
        assert_eq!(e.os_error(), Some(libc::EEXIST));
        assert!(e
            .to_string()
            .starts_with("address 10.0.0.5/32 on eth0: RTM_NEWADDR: "));
        assert!(e.source().unwrap().to_string().starts_with("RTM_NEWADDR"));
        assert!(!e.is_already_exists());
    }
}
