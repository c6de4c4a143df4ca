//! The lab's control token: who may tell an agent what to run, and who may
//! speak for an agent to the master.
//!
//! An agent runs whatever a launch on its control port (`<host ip>:5051`)
//! says, through `/bin/sh`, as root; the master's `/lab/agents/...` routes
//! take an agent's registration (and so decide where the master sends its
//! launches) and its task statuses. Both are reachable over the fabric, and
//! so from the lab's own tasks: a task reaches its own host's addresses
//! (netmod's host profile lets it), a task in a netgroup reaches the other
//! hosts' fabric addresses, and a host-network task shares its agent's
//! namespace. So the lab guards them twice:
//!
//! - **a secret**: `lab up` makes a random token (32 bytes from the kernel)
//!   and writes it, mode 0600, to `control-token` in the lab's run
//!   directory. The master sends it with every launch and kill
//!   (`Authorization: Bearer <token>`), the agents with every heartbeat
//!   and status; each side compares what it gets in constant time, and a
//!   request without it gets 401 and does nothing. It is never in
//!   `lab.json` (`lab status --json` prints that), and each task's mount
//!   namespace has `/dev/null` bound over the file (see
//!   [`crate::agent::shim`]).
//! - **the network**: each agent host drops every connection to its control
//!   port that does not come from the master's bridge address over the
//!   fabric (see [`crate::fabric::guard_control_port`]).
//!
//! Neither makes a task that is root with every capability harmless: such a
//! task can leave its namespaces altogether. They keep a task that can only
//! send packets or read files (the usual foothold) from running commands.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{fail, Context, LabError};
use crate::http::{Reply, Request};

/// The token file's name in the lab's run directory.
pub const TOKEN_FILE: &str = "control-token";
/// The header the token travels in.
pub const HEADER: &str = "Authorization";
/// Random bytes in a token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;
const SCHEME: &str = "Bearer";

/// The lab's control token. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Token {
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

impl Token {
    /// A fresh token from the kernel's random source (no fallback: without
    /// it the lab does not come up).
    pub fn generate() -> Result<Token, LabError> {
        let mut buf = [0u8; TOKEN_BYTES];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .context(|| "cannot read /dev/urandom for the lab's control token".into())?;
        Ok(Token {
            secret: buf.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// A token from its text: exactly 64 lowercase hex characters.
    pub fn from_secret(secret: &str) -> Result<Token, LabError> {
        let ok = secret.len() == 2 * TOKEN_BYTES
            && secret
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return fail("the lab's control token is malformed");
        }
        Ok(Token {
            secret: secret.to_string(),
        })
    }

    /// Makes a fresh token and writes it to `path`, readable and writable by
    /// its owner only. A file already there is replaced (it is a leftover
    /// of a lab that is gone: `lab up` checked).
    pub fn create(path: &Path) -> Result<Token, LabError> {
        let token = Token::generate()?;
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(|| format!("cannot remove {}", path.display())),
        }
        // O_EXCL: never through a symlink or into a file someone else opened.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .context(|| format!("cannot create {}", path.display()))?;
        // The mode is the umask's to narrow, never to widen; set it anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(token.secret.as_bytes()))
            .context(|| format!("cannot write {}", path.display()))?;
        Ok(token)
    }

    /// Reads the token `lab up` wrote; refuses a file others could read or
    /// write, or one another user owns.
    pub fn load(path: &Path) -> Result<Token, LabError> {
        let meta = fs::symlink_metadata(path)
            .context(|| format!("cannot read the lab's control token {}", path.display()))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.file_type().is_file() || meta.mode() & 0o077 != 0 || meta.uid() != me {
            return fail(format!(
                "{} must be a regular file of this user with mode 0600",
                path.display()
            ));
        }
        let text = fs::read_to_string(path)
            .context(|| format!("cannot read the lab's control token {}", path.display()))?;
        Token::from_secret(text.trim())
    }

    /// The `Authorization` header's value.
    pub fn authorization(&self) -> String {
        format!("{SCHEME} {}", self.secret)
    }

    /// Whether a request carries this token (compared in constant time).
    pub fn admits(&self, req: &Request) -> bool {
        let Some(value) = req.header(HEADER) else {
            return false;
        };
        let value = value.trim();
        let Some((scheme, presented)) = value.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case(SCHEME)
            && constant_time_eq(presented.trim().as_bytes(), self.secret.as_bytes())
    }
}

/// The answer to a request without the token: 401, nothing done.
pub fn unauthorized() -> Reply {
    Reply::message(
        401,
        "this port takes requests from the lab's master and agents only (no valid control token)",
    )
    .with_header("WWW-Authenticate", format!("{SCHEME} realm=\"netmod-lab\""))
}

/// Equality whose time depends on the lengths only, not on where the
/// bytes first differ. Every token has the same, public, length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request {
        let r = Request::new("POST", "/tasks", b"{}");
        match auth {
            Some(a) => r.with_header("authorization", a),
            None => r,
        }
    }

    #[test]
    fn only_the_token_is_admitted() {
        let t = Token::generate().unwrap();
        let other = Token::generate().unwrap();
        assert_ne!(t.secret, other.secret, "fresh tokens differ");
        assert_eq!(t.secret.len(), 64);
        assert!(t.admits(&req(Some(&t.authorization()))));
        assert!(t.admits(&req(Some(&format!("bearer {}", t.secret)))));
        let mut near = t.secret.clone().into_bytes();
        near[63] = if near[63] == b'0' { b'1' } else { b'0' };
        let near = String::from_utf8(near).unwrap();
        for bad in [
            None,
            Some(String::new()),
            Some("Bearer".to_string()),
            Some(format!("Basic {}", t.secret)),
            Some(t.secret.clone()),
            Some(other.authorization()),
            Some(format!("Bearer {near}")),
            Some(format!("Bearer {}", &t.secret[..32])),
            Some(format!("Bearer {}x", t.secret)),
        ] {
            assert!(!t.admits(&req(bad.as_deref())), "{bad:?}");
        }
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn the_file_is_private_and_checked() {
        let dir = std::env::temp_dir().join(format!("nmlab-token-{}", crate::util::random_hex(6)));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(TOKEN_FILE);
        fs::write(&path, "stale").unwrap();
        let t = Token::create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(Token::load(&path).unwrap().secret, t.secret);
        // Readable by others: refused.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Token::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0600"), "{e}");
        // A symlink to a private file: refused.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Token::load(&link).is_err());
        // Malformed: refused.
        fs::write(&path, "not a token").unwrap();
        assert!(Token::load(&path).is_err());
        assert!(Token::from_secret(&"A".repeat(64)).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refusal_is_401_with_a_challenge() {
        let r = unauthorized();
        assert_eq!(r.status, 401);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "WWW-Authenticate" && v.starts_with("Bearer")));
    }
}
