//! The accept loops: every configured listener binds at start, and each accepted connection gets
//! its own task, within the connection limits (beyond them `421 4.7.0` and close, written by a
//! short task so accepting never pauses). Sessions stop with the relay's shutdown token.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SmtpError;
use super::limits::Connections;
use super::reply::Reply;
use super::session::{Session, SessionContext};
use crate::config::SmtpConfig;

pub struct Listener {
    listener: TcpListener,
    ctx: Arc<SessionContext>,
    connections: Arc<Connections>,
}

/// Binds every listener of `config`, `smtp.listen` first; returns (name, socket) pairs.
///
/// # Errors
/// The first address that cannot be bound.
pub async fn bind_all(config: &SmtpConfig) -> Result<Vec<(String, TcpListener)>, SmtpError> {
    let mut bound = Vec::new();
    for (name, listener) in config.all_listeners() {
        // Validation made the address required.
        let Some(addr) = listener.address else {
            continue;
        };
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|source| SmtpError::Bind {
                name: name.clone(),
                addr,
                source,
            })?;
        let address = socket.local_addr().unwrap_or(addr);
        tracing::info!(listener = %name, %address, mode = ?listener.mode, "SMTP listener bound");
        bound.push((name, socket));
    }
    Ok(bound)
}

impl Listener {
    pub fn new(
        listener: TcpListener,
        ctx: Arc<SessionContext>,
        connections: Arc<Connections>,
    ) -> Self {
        Self {
            listener,
            ctx,
            connections,
        }
    }

    /// Accepts connections until `shutdown` fires; sessions are tracked by `sessions`.
    pub async fn run(self, shutdown: CancellationToken, sessions: TaskTracker) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (mut stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: wait for sessions to close rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let smtp = self.ctx.config.borrow().smtp.clone();
            let Some(slot) = self.connections.try_open(
                peer.ip(),
                smtp.max_connections,
                smtp.max_connections_per_client,
            ) else {
                tracing::warn!(client = %peer, listener = %self.ctx.listener, "connection limit reached; refused");
                sessions.spawn(async move {
                    let mut out = Vec::new();
                    Reply::TOO_MANY_CONNECTIONS.write_to(&mut out);
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let _ = stream.write_all(&out).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                });
                continue;
            };
            let session = Session::new(stream, peer, self.ctx.clone());
            let token = shutdown.child_token();
            sessions.spawn(async move {
                if let Err(err) = session.run(token).await {
                    tracing::debug!(client = %peer, error = %err, "session ended with an error");
                }
                drop(slot);
            });
        }
    }
}
