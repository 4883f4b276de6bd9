//! The listeners' TLS: a rustls server configuration built from the PEM files of `[smtp.tls]`,
//! read at start and again on each reload, so renewed certificates apply without a restart.

use std::path::Path;
use std::sync::Arc;

use rustls::version::{TLS12, TLS13};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::SmtpError;
use crate::config::TlsConfig;

/// The acceptor for `config`, or `None` when TLS is not configured.
///
/// # Errors
/// An unreadable or invalid certificate or key, naming the key and file.
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, SmtpError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| SmtpError::file("smtp.tls.cert_file", cert_file, err))?;
    if certs.is_empty() {
        return Err(SmtpError::file(
            "smtp.tls.cert_file",
            cert_file,
            "no CERTIFICATE block",
        ));
    }
    // Never print the key's contents: the error names the file only.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| SmtpError::file("smtp.tls.key_file", key_file, err))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version.as_str() {
        "1.3" => &[&TLS13],
        _ => &[&TLS13, &TLS12],
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|err| SmtpError::file("smtp.tls.min_version", Path::new("-"), err))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| SmtpError::file("smtp.tls.key_file", key_file, err))?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}
