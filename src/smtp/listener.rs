//! The accept loop: one task per SMTP connection, bounded in number, each stopped by the relay's
//! shutdown token.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::{Session, SessionContext};

/// Sessions open at once; beyond it new connections wait in the kernel's backlog.
const MAX_SESSIONS: usize = 1024;

pub struct Listener {
    listener: TcpListener,
    ctx: Arc<SessionContext>,
}

impl Listener {
    pub fn new(listener: TcpListener, ctx: Arc<SessionContext>) -> Self {
        Self { listener, ctx }
    }

    /// Accepts connections until `shutdown` fires; sessions are tracked by `sessions`.
    pub async fn run(self, shutdown: CancellationToken, sessions: TaskTracker) {
        let permits = Arc::new(Semaphore::new(MAX_SESSIONS));
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: wait for sessions to close rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let session = Session::new(stream, peer, self.ctx.clone());
            let token = shutdown.child_token();
            sessions.spawn(async move {
                if let Err(err) = session.run(token).await {
                    tracing::debug!(client = %peer, error = %err, "session ended with an error");
                }
                drop(permit);
            });
        }
    }
}
