//! `[smtp.tls]` and `[smtp.auth]`: the certificate the listeners present and the users who may
//! authenticate. Only paths and limits here; the files are read when the relay starts and again on
//! each reload (`smtp::tls`, `smtp::auth`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain, PEM (leaf first). With `key_file`, enables STARTTLS and TLS listeners.
    pub cert_file: Option<PathBuf>,
    /// Private key of the certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Oldest TLS version accepted: "1.2" or "1.3".
    pub min_version: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            min_version: "1.2".into(),
        }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpAuthConfig {
    /// Users allowed to AUTH: one `name:hash` per line, bcrypt (`htpasswd -B`) or argon2 (PHC).
    pub users_file: Option<PathBuf>,
    /// Failed AUTH attempts from one client address before it is locked out.
    pub max_failures: u32,
    /// How long a locked-out address is refused AUTH.
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
}

impl Default for SmtpAuthConfig {
    fn default() -> Self {
        Self {
            users_file: None,
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
        }
    }
}
