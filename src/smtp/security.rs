//! What the listeners read from files: the TLS certificate and the AUTH users. Loaded at start
//! (a bad file stops the relay before it listens) and again whenever the one reload mechanism
//! publishes a new configuration; a reload that cannot read them keeps the previous ones.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::SmtpError;
use super::auth::Users;
use crate::config::{Config, SmtpConfig};

pub struct Security {
    /// Present when `[smtp.tls]` is configured.
    pub tls: Option<TlsAcceptor>,
    pub users: Users,
}

impl Security {
    /// # Errors
    /// An unreadable or invalid certificate, key or users file.
    pub fn load(config: &SmtpConfig) -> Result<Self, SmtpError> {
        Ok(Self {
            tls: super::tls::acceptor(&config.tls)?,
            users: Users::load(config.auth.users_file.as_deref())?,
        })
    }
}

/// Re-reads the files each time a configuration is published, until `stop`.
pub async fn reload_on_change(
    mut config: watch::Receiver<Arc<Config>>,
    security: watch::Sender<Arc<Security>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = config.changed() => if changed.is_err() { return },
        }
        let smtp = config.borrow_and_update().smtp.clone();
        match tokio::task::spawn_blocking(move || Security::load(&smtp)).await {
            Ok(Ok(loaded)) => {
                security.send_replace(Arc::new(loaded));
                tracing::info!("SMTP certificate and users reloaded");
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "SMTP certificate or users not reloaded; the previous ones stay");
            }
            Err(err) => tracing::error!(error = %err, "SMTP reload task failed"),
        }
    }
}
