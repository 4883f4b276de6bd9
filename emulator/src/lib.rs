//! graph-relay's stand-in for Microsoft: an emulator of the Entra token endpoint
//! (client credentials) and of Graph `sendMail`, written from `shared/docs/microsoft-graph.md`
//! and as strict as Microsoft, with fault injection (queued faults and seeded random throttling),
//! a per-mailbox audit of `Retry-After`, and recording for tests and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use graph_relay_emulator::{EmulatorConfig, Fault, start};
//! let emulator = start(EmulatorConfig::single(
//!     "11111111-2222-3333-4444-555555555555",
//!     "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
//!     "secret",
//! ))
//! .await?;
//! emulator.inject(Fault::graph(429, 2).retry_after("1"));
//! // authority host: emulator.url(); Graph endpoint: emulator.graph_endpoint()
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod config;
mod control;
mod drafts;
mod entra;
mod graph;
mod message;
mod state;
mod throttle;
mod util;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{App, EmulatorConfig, FederatedCredential, Secret, Tenant};
pub use state::{AcceptedMail, Fault, FaultTarget, MailContent, Rejection, Stats};
pub use throttle::{EarlyRequest, RetryAfterAudit, Throttling, ThrottlingError};

use state::Shared;

/// A running emulator. Dropping it (or [`Emulator::shutdown`]) stops the server.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts an emulator on an ephemeral loopback port.
///
/// # Errors
/// When the listener cannot be bound.
pub async fn start(config: EmulatorConfig) -> io::Result<Emulator> {
    start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
}

/// Starts an emulator on `addr`, which must be a loopback address: the emulator accepts any
/// caller, so it must never be reachable from the network.
///
/// # Errors
/// `InvalidInput` for a non-loopback address; otherwise when the listener cannot be bound.
pub async fn start_on(addr: SocketAddr, config: EmulatorConfig) -> io::Result<Emulator> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("emulator listen address {addr} is not a loopback address"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(config));
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
        .nest("/_emulator", control::router())
        .fallback(graph::handle)
        .with_state(Arc::clone(&shared));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            // A dropped sender also means "stop".
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            eprintln!("graph-relay-emulator: server error: {e}");
        }
    });
    Ok(Emulator {
        addr,
        shared,
        stop: Some(stop),
        task: Some(task),
    })
}

impl Emulator {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the authority host (token URL = `{url}/{tenant}/oauth2/v2.0/token`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Graph endpoint, `{url}/v1.0`.
    pub fn graph_endpoint(&self) -> String {
        format!("{}/v1.0", self.url())
    }

    /// Queues a fault; faults for the same target apply in the order injected.
    pub fn inject(&self, fault: Fault) {
        self.shared.inject(fault);
    }

    /// Drops all queued faults.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Answers a share of the requests that name a mailbox (sendMail and the draft path) with
    /// 429 or 503 at random; `None` stops it. Queued faults ([`Emulator::inject`]) still apply.
    ///
    /// # Errors
    /// Shares outside 0..=1 or adding up to more than 1.
    pub fn throttle(&self, throttling: Option<Throttling>) -> Result<(), ThrottlingError> {
        if let Some(t) = &throttling {
            t.validate()?;
        }
        self.shared.throttle.set(throttling);
        Ok(())
    }

    /// Every `Retry-After` answered for a mailbox, and each request for that mailbox that came
    /// before it ran out (which Graph counts against the caller).
    pub fn retry_after_audit(&self) -> RetryAfterAudit {
        self.shared.throttle.audit()
    }

    /// Every sendMail answered with 202, oldest first.
    pub fn accepted(&self) -> Vec<AcceptedMail> {
        self.shared.accepted()
    }

    /// Every refused request (token endpoint and Graph, faults included), oldest first.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.shared.rejected()
    }

    /// Token requests received, issued or refused.
    pub fn token_requests(&self) -> usize {
        let stats = self.shared.stats();
        stats.tokens_issued + stats.tokens_refused
    }

    /// Counters, including the maximum concurrent sendMail requests per mailbox.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Drafts created and neither sent nor deleted.
    pub fn open_drafts(&self) -> usize {
        self.shared.drafts.open()
    }

    /// Drafts deleted with `DELETE /users/{id}/messages/{id}`.
    pub fn deleted_drafts(&self) -> usize {
        self.shared.drafts.deleted()
    }

    /// Makes every token issued so far fail at Graph with 401, as if it had expired.
    pub fn revoke_tokens(&self) {
        self.shared.revoke_tokens();
    }

    /// Waits until at least `n` mails were accepted; `false` if `timeout` passed first.
    pub async fn wait_for_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.accepted_count() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting connections and waits (at most 5 s) for requests in progress.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may already be gone; nothing to do then.
            let _ = stop.send(());
        }
    }
}
