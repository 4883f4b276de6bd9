//! SMTP AUTH (PLAIN and LOGIN): the users file (`name:hash`, bcrypt as `htpasswd -B` writes it or
//! an argon2 PHC string), SASL decoding, and the per-address lockout after failed attempts.
//! Passwords stay in `SecretString` and never reach a log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::SmtpError;

/// The users who may authenticate, by name.
#[derive(Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// Reads the users file; no file means no users (AUTH is then not offered).
    ///
    /// # Errors
    /// An unreadable file or a line that is not `name:hash` with a supported hash.
    pub fn load(path: Option<&Path>) -> Result<Self, SmtpError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| SmtpError::file("smtp.auth.users_file", path, err))?;
        Self::parse(&text).map_err(|problem| SmtpError::file("smtp.auth.users_file", path, problem))
    }

    /// Parses `name:hash` lines; blank lines and `#` comments are skipped.
    ///
    /// # Errors
    /// `line N: what is wrong` (never the hash itself).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected name:hash", n + 1));
            };
            if name.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            let supported = if hash.starts_with("$argon2") {
                PasswordHash::new(hash).is_ok_and(|h| h.salt.is_some() && h.hash.is_some())
            } else {
                ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
            };
            if !supported {
                return Err(format!(
                    "line {} ({name}): not a bcrypt or argon2 hash",
                    n + 1
                ));
            }
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Self { hashes })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a password; slow on purpose (bcrypt, argon2), so call it off the async threads.
    pub fn verify(&self, name: &str, password: &SecretString) -> bool {
        let Some(hash) = self.hashes.get(name) else {
            return false;
        };
        let password = password.expose_secret().as_bytes();
        if hash.starts_with("$argon2") {
            PasswordHash::new(hash)
                .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
        } else {
            bcrypt::verify(password, hash).unwrap_or(false)
        }
    }
}

/// Decodes one base64 SASL line; `None` for invalid base64 or UTF-8.
pub fn decode(line: &str) -> Option<String> {
    let bytes = STANDARD.decode(line.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// Splits a PLAIN response (`authzid NUL authcid NUL password`, RFC 4616) into user and password.
pub fn decode_plain(line: &str) -> Option<(String, SecretString)> {
    let text = decode(line)?;
    let mut parts = text.splitn(3, '\0');
    let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    (!user.is_empty()).then(|| (user.to_string(), SecretString::from(password)))
}

/// Failed attempts per client address; an address with too many is refused AUTH for a while.
#[derive(Default)]
pub struct Lockout {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Addresses remembered at most; beyond it expired entries are dropped first.
const MAX_TRACKED: usize = 10_000;

impl Lockout {
    pub fn is_locked(&self, ip: IpAddr, max_failures: u32, lockout: Duration) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures
            .get(&ip)
            .is_some_and(|(count, last)| *count >= max_failures && last.elapsed() < lockout)
    }

    pub fn record_failure(&self, ip: IpAddr, lockout: Duration) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, last)| last.elapsed() < lockout);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        // A lockout that has run out starts counting afresh.
        if entry.1.elapsed() >= lockout {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    pub fn record_success(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bcrypt hash with the `$2y$` prefix that `htpasswd -B` writes.
    fn htpasswd_hash(password: &str) -> String {
        bcrypt::hash_with_result(password, 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY)
    }

    fn argon2_hash(password: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn bcrypt_and_argon2_users_verify() {
        let text = format!(
            "# users\n\nscanner:{}\nerp:{}\nold:{}\n",
            htpasswd_hash("s3cret"),
            argon2_hash("pa:ss"),
            bcrypt::hash("0ld", 4).unwrap(),
        );
        let users = Users::parse(&text).unwrap();
        let secret = |s: &str| SecretString::from(s);
        assert!(users.verify("scanner", &secret("s3cret")));
        assert!(!users.verify("scanner", &secret("S3cret")));
        assert!(users.verify("erp", &secret("pa:ss")));
        assert!(!users.verify("erp", &secret("pa")));
        assert!(users.verify("old", &secret("0ld")));
        assert!(!users.verify("nobody", &secret("s3cret")));
    }

    #[test]
    fn bad_users_files_name_the_line_and_never_the_hash() {
        let good = format!("ok:{}", htpasswd_hash("pw"));
        let cases = [
            ("scanner".to_string(), "line 1"),
            (":$2y$05$abc".to_string(), "line 1"),
            (format!("{good}\nx:plain"), "line 2"),
            (format!("{good}\nx:$2y$05$short"), "line 2"),
            ("x:$argon2id$broken".to_string(), "line 1"),
        ];
        for (text, expected) in cases {
            let err = Users::parse(&text).err().unwrap();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains('$'), "{err}");
        }
    }

    #[test]
    fn sasl_plain_and_login_lines_decode() {
        let plain = STANDARD.encode("\0scanner\0s3cret");
        let (user, password) = decode_plain(&plain).unwrap();
        assert_eq!(
            (user.as_str(), password.expose_secret()),
            ("scanner", "s3cret")
        );
        let with_authzid = STANDARD.encode("admin\0scanner\0pw\0with-nul");
        assert_eq!(decode_plain(&with_authzid).unwrap().0, "scanner");
        assert!(decode_plain(&STANDARD.encode("\0\0pw")).is_none());
        assert!(decode_plain("not base64!").is_none());
        assert!(decode_plain(&STANDARD.encode("no-nul")).is_none());
        assert_eq!(
            decode(&STANDARD.encode("scanner")).as_deref(),
            Some("scanner")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lockout_after_max_failures_expires_and_success_clears() {
        let lockout = Lockout::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let period = Duration::from_secs(60);
        for _ in 0..3 {
            assert!(!lockout.is_locked(ip, 3, period));
            lockout.record_failure(ip, period);
        }
        assert!(lockout.is_locked(ip, 3, period));
        assert!(!lockout.is_locked(other, 3, period));
        tokio::time::advance(period).await;
        assert!(!lockout.is_locked(ip, 3, period));
        lockout.record_failure(ip, period);
        assert!(!lockout.is_locked(ip, 3, period), "counting starts afresh");
        lockout.record_failure(ip, period);
        lockout.record_success(ip);
        lockout.record_failure(ip, period);
        lockout.record_failure(ip, period);
        assert!(!lockout.is_locked(ip, 3, period));
    }
}
