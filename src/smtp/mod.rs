//! The SMTP front door: [`listener`] accepts connections on every configured listener, [`session`]
//! runs each one's state machine on top of smtp-proto's parser, and [`reply`] holds every answer
//! the relay gives. [`policy`] decides who may relay what, [`auth`] and [`tls`] check clients, and
//! [`security`] reloads their files.

pub mod auth;
pub mod limits;
pub mod listener;
pub mod policy;
pub mod reply;
pub mod security;
pub mod session;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use listener::Listener;
pub use security::Security;
pub use session::{Session, SessionContext};

/// What can stop the SMTP side from starting (or a reload from applying).
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("{key}: cannot use {}: {problem}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("cannot listen on {addr} (smtp {name}): {source}; is another process using it?")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl SmtpError {
    pub(crate) fn file(key: &'static str, path: &Path, problem: impl std::fmt::Display) -> Self {
        Self::File {
            key,
            path: path.to_path_buf(),
            problem: problem.to_string(),
        }
    }

    /// A busy port may free up; a bad file stays bad until someone fixes it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Bind { .. })
    }
}
