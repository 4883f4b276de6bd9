//! The certificate credential: a JWT client assertion signed with the app's private key, which the
//! token request carries instead of a client secret (microsoft-graph.md §1, E2).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha1::Digest;

use super::TokenError;
use crate::config::AssertionAlgorithm;

/// Lifetime of an assertion: Entra advises "5-10 minutes after nbf at most".
const ASSERTION_LIFETIME_S: u64 = 600;

/// A certificate and its private key, loaded from PEM files.
pub struct Certificate {
    /// DER of the certificate, for the thumbprints.
    der: Vec<u8>,
    key: EncodingKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl Certificate {
    /// Reads the certificate (first `CERTIFICATE` block) and the RSA private key.
    ///
    /// # Errors
    /// A file is unreadable or not the expected PEM; the error names the key, never the content.
    pub fn load(certificate_file: &Path, private_key_file: &Path) -> Result<Self, TokenError> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path).map_err(|err| TokenError::Credential {
                key: key.into(),
                problem: format!("cannot read {}: {err}", path.display()),
            })
        };
        let certificate = read("auth.certificate_file", certificate_file)?;
        let der = certificate_der(&certificate).ok_or_else(|| TokenError::Credential {
            key: "auth.certificate_file".into(),
            problem: format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                certificate_file.display()
            ),
        })?;
        let key_pem = read("auth.private_key_file", private_key_file)?;
        // jsonwebtoken also takes a certificate's public key here, which cannot sign.
        let is_private = std::str::from_utf8(&key_pem).is_ok_and(|text| {
            text.contains("-----BEGIN PRIVATE KEY-----")
                || text.contains("-----BEGIN RSA PRIVATE KEY-----")
        });
        let key =
            EncodingKey::from_rsa_pem(if is_private { &key_pem } else { b"" }).map_err(|_| {
                TokenError::Credential {
                    key: "auth.private_key_file".into(),
                    problem: format!(
                        "{} holds no PEM RSA private key (PKCS#8 or PKCS#1)",
                        private_key_file.display()
                    ),
                }
            })?;
        Ok(Self { der, key })
    }

    /// `x5t`: base64url SHA-1 thumbprint of the DER certificate.
    pub fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&self.der))
    }

    /// `x5t#S256`: base64url SHA-256 thumbprint of the DER certificate.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&self.der))
    }

    /// A signed assertion for `client_id` towards the token URL `audience`, valid from `now`
    /// (seconds since the epoch).
    ///
    /// # Errors
    /// The key cannot sign with the algorithm (e.g. not an RSA key).
    pub fn sign(
        &self,
        algorithm: AssertionAlgorithm,
        client_id: &str,
        audience: &str,
        now: u64,
    ) -> Result<String, TokenError> {
        let mut header = match algorithm {
            AssertionAlgorithm::PS256 => Header::new(Algorithm::PS256),
            AssertionAlgorithm::RS256 => Header::new(Algorithm::RS256),
        };
        match algorithm {
            AssertionAlgorithm::PS256 => header.x5t_s256 = Some(self.x5t_s256()),
            AssertionAlgorithm::RS256 => header.x5t = Some(self.x5t()),
        }
        let claims = Claims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_S,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|err| TokenError::Credential {
            key: "auth.private_key_file".into(),
            problem: format!("cannot sign the client assertion: {err}"),
        })
    }
}

/// The DER bytes of the first PEM `CERTIFICATE` block.
fn certificate_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let (_, rest) = text.split_once("-----BEGIN CERTIFICATE-----")?;
    let (body, _) = rest.split_once("-----END CERTIFICATE-----")?;
    let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(base64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, rcgen::Certificate) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["graph-relay".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file, cert)
    }

    #[test]
    fn assertions_carry_the_thumbprint_of_their_algorithm_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file, cert) = certificate(dir.path());
        let loaded = Certificate::load(&cert_file, &key_file).unwrap();
        let sha256 = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert.der()));
        let sha1 = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cert.der()));
        let audience = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let verify_key = jsonwebtoken::DecodingKey::from_rsa_pem(cert.pem().as_bytes()).unwrap();
        for (algorithm, jwt_algorithm) in [
            (AssertionAlgorithm::PS256, Algorithm::PS256),
            (AssertionAlgorithm::RS256, Algorithm::RS256),
        ] {
            let jwt = loaded.sign(algorithm, "client", audience, 1_000).unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(header.alg, jwt_algorithm);
            match algorithm {
                AssertionAlgorithm::PS256 => {
                    assert_eq!(header.x5t_s256.as_deref(), Some(sha256.as_str()));
                    assert_eq!(header.x5t, None);
                }
                AssertionAlgorithm::RS256 => {
                    assert_eq!(header.x5t.as_deref(), Some(sha1.as_str()));
                    assert_eq!(header.x5t_s256, None);
                }
            }
            let mut validation = jsonwebtoken::Validation::new(jwt_algorithm);
            validation.validate_exp = false;
            validation.set_audience(&[audience]);
            let claims = jsonwebtoken::decode::<serde_json::Value>(&jwt, &verify_key, &validation)
                .unwrap()
                .claims;
            assert_eq!(claims["iss"], "client");
            assert_eq!(claims["sub"], "client");
            assert_eq!(claims["nbf"], 1_000);
            assert_eq!(claims["exp"], 1_600);
            assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() == 36));
        }
    }

    #[test]
    fn unusable_files_name_their_key_and_not_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file, _) = certificate(dir.path());
        let key_pem = std::fs::read_to_string(&key_file).unwrap();
        let cases = [
            (key_file.clone(), key_file.clone(), "auth.certificate_file"),
            (
                cert_file.clone(),
                cert_file.clone(),
                "auth.private_key_file",
            ),
            (
                dir.path().join("none"),
                key_file.clone(),
                "auth.certificate_file",
            ),
        ];
        for (cert, key, named) in cases {
            let err = Certificate::load(&cert, &key).err().expect("refused");
            let text = err.to_string();
            assert!(text.contains(named), "{text}");
            assert!(!text.contains(key_pem.lines().nth(1).unwrap()), "{text}");
            assert!(!err.is_retryable());
        }
    }
}
