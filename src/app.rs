//! Wiring and lifecycle: opens the spool, builds the outbound path (Graph or dry run), starts the
//! scheduler and the SMTP listener, and on shutdown stops accepting, lets sessions and deliveries
//! finish within a grace period, and leaves everything else safely in the spool.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::delivery::{Delivery, Fidelity, Outbound};
use crate::graph::client::{GraphClient, http_client};
use crate::graph::dry_run::DryRunWriter;
use crate::graph::token::TokenProvider;
use crate::queue::scheduler::Scheduler;
use crate::queue::{Spool, SpoolError};
use crate::smtp::{Listener, SessionContext};

/// How long open sessions and in-flight deliveries get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Where accepted messages go.
#[derive(Debug, Clone)]
pub enum Mode {
    /// To Microsoft Graph, with the configured credentials.
    Graph,
    /// Written as JSON files under this directory; no credentials, no Microsoft.
    DryRun(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot listen on {addr}: {source}; is another process using it? (set smtp.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot use the dry-run directory: {0}")]
    DryRunDir(#[source] std::io::Error),
}

/// Re-reads the configuration from where it first came from (file and environment).
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Runs the relay until `shutdown` completes; SIGHUP applies `reload`'s configuration.
///
/// # Errors
/// Missing credentials, an unusable spool or listen address; all before anything is accepted.
pub async fn run(
    config: Config,
    mode: Mode,
    reload: Reload,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let outbound = match &mode {
        Mode::Graph => {
            let credentials = config.auth.credentials()?;
            let http = http_client(&config.graph).map_err(AppError::HttpClient)?;
            Outbound::Graph {
                tokens: Box::new(TokenProvider::new(
                    http.clone(),
                    &config.auth.authority_host,
                    credentials,
                    config.auth.scope.clone(),
                )),
                client: GraphClient::new(http, config.graph.endpoint.clone()),
            }
        }
        Mode::DryRun(dir) => Outbound::DryRun(DryRunWriter::new(dir).map_err(AppError::DryRunDir)?),
    };

    let (spool, recovered) = Spool::open(config.queue.dir())?;
    tracing::info!(
        dir = %spool.dir().display(),
        queued = recovered.entries.len(),
        orphans_removed = recovered.orphans_removed,
        quarantined = recovered.quarantined,
        "spool opened"
    );
    let spool = Arc::new(spool);
    let delivery = Arc::new(
        Delivery::new(spool.clone(), outbound, config.graph.endpoint.clone()).with_fidelity(
            Fidelity {
                options: config.graph.convert_options(&config.smtp.hostname),
                large_messages: config.graph.large_messages,
            },
        ),
    );
    if config.graph.format == crate::convert::Format::Mime {
        tracing::warn!(
            "graph.format = \"mime\": envelope-only recipients travel in an added Bcc: header; \
             whether Exchange strips it from delivered copies is unconfirmed"
        );
    }
    let (scheduler, queue) = Scheduler::new(
        spool.clone(),
        delivery,
        config.queue.concurrency,
        config.queue.retry_initial,
        config.queue.retry_max,
    );

    let listen = config.smtp.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| AppError::Bind {
        addr: listen,
        source,
    })?;
    tracing::info!(%address, mode = ?mode, "SMTP listener bound");

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    let ctx = Arc::new(SessionContext {
        config: config_rx,
        spool,
        queue,
    });
    tasks.spawn(reload_on_sighup(reload, config_tx, stop.clone()));
    tasks.spawn(scheduler.run(recovered.entries, stop.clone(), tasks.clone()));
    tasks.spawn(Listener::new(listener, ctx).run(stop.clone(), tasks.clone()));

    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing open work");
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "grace period over; unfinished deliveries stay in the spool"
        );
    }
    Ok(())
}

/// The one reload mechanism: on SIGHUP the configuration is loaded and validated again and, if
/// valid, published to every part that watches it (new SMTP sessions use the new `[smtp]`
/// limits). Sections that are only read at start are named in a warning.
async fn reload_on_sighup(
    reload: Reload,
    config: watch::Sender<Arc<Config>>,
    stop: CancellationToken,
) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; reload needs a restart");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = hangup.recv() => {}
        }
        match reload() {
            Ok(new) => {
                let restart_needed = sections_needing_restart(&config.borrow(), &new);
                if !restart_needed.is_empty() {
                    tracing::warn!(
                        sections = ?restart_needed,
                        "configuration reloaded; changes in these sections take effect after a restart"
                    );
                }
                config.send_replace(Arc::new(new));
                tracing::info!("configuration reloaded");
            }
            Err(err) => {
                tracing::error!(error = %err, "reload refused; the running configuration stays");
            }
        }
    }
}

/// Sections whose values are read once at start (everything but `[smtp]` so far).
fn sections_needing_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let section = |config: &Config, name: &str| {
        serde_json::to_value(config)
            .map(|value| value[name].clone())
            .ok()
    };
    let mut changed: Vec<&'static str> = ["http", "auth", "graph", "queue"]
        .into_iter()
        .filter(|name| section(old, name) != section(new, name))
        .collect();
    if old.smtp.listen != new.smtp.listen {
        changed.push("smtp.listen");
    }
    changed
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
