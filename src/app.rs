//! Wiring and lifecycle: opens the spool, builds the outbound path (Graph or dry run), starts the
//! scheduler, the SMTP listener and the operations endpoint, tells systemd when it is ready, and
//! on shutdown stops accepting, lets sessions and deliveries
//! finish within a grace period, and leaves everything else safely in the spool.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
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
use crate::http::Health;
use crate::queue::dsn::Reporter;
use crate::queue::metrics::Counters;
use crate::queue::pacing::Pacing;
use crate::queue::retry::{RetryPolicy, RetryPolicyError};
use crate::queue::scheduler::{Clock, Limits, Scheduler};
use crate::queue::{Spool, SpoolError};
use crate::smtp::auth::Lockout;
use crate::smtp::limits::{Connections, raise_fd_limit};
use crate::smtp::listener::bind_all;
use crate::smtp::{Listener, Security, SessionContext, SmtpError};

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
    #[error("{key}: cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot use the dry-run directory: {0}")]
    DryRunDir(#[source] std::io::Error),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("queue retry settings: {0}")]
    RetryPolicy(#[from] RetryPolicyError),
    #[error("cannot open the queue control socket: {0}")]
    Control(#[source] std::io::Error),
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
    // The token provider follows reloads and credential file changes (started below).
    let mut followed_tokens = None;
    let outbound = match &mode {
        Mode::Graph => {
            let http = http_client(&config.graph).map_err(AppError::HttpClient)?;
            let tokens = TokenProvider::from_config(http.clone(), &config.auth)?;
            followed_tokens = Some(tokens.clone());
            Outbound::Graph {
                tokens: Box::new(tokens),
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
    let spool = Arc::new(
        spool
            .with_max_size(config.queue.max_size)
            .with_sync(config.queue.sync),
    );
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
    let policy = RetryPolicy::try_new(
        config.queue.retry_initial,
        config.queue.retry_max,
        config.queue.max_age,
        config.queue.fault_retry,
    )?;
    let limits = Limits {
        concurrency: config.queue.concurrency,
        per_lane: config.queue.mailbox_concurrency,
    };
    let counters = Arc::new(Counters::default());
    let (scheduler, queue) = Scheduler::new(
        spool.clone(),
        delivery,
        policy,
        limits,
        Clock::system(),
        counters.clone(),
    );
    let scheduler = match &config.queue.dsn_from {
        Some(from) => scheduler.with_dsn(Reporter::new(from, &config.smtp.hostname)),
        None => scheduler,
    };
    let scheduler = scheduler.with_pacing(Pacing {
        messages_per_minute: config.queue.mailbox_messages_per_minute,
        recipients_per_day: config.queue.mailbox_recipients_per_day,
    });

    // The operations endpoint first: its address is logged before the SMTP listeners'.
    let http_listen = config.http.listen;
    let http_listener = bind("http.listen", http_listen).await?;
    let http_address = local_addr("http.listen", &http_listener, http_listen)?;
    tracing::info!(address = %http_address, "operations endpoint bound (/metrics, /healthz, /readyz)");
    let open_files = raise_fd_limit();
    let security = Security::load(&config.smtp)?;
    let bound = bind_all(&config.smtp).await?;
    tracing::info!(open_files = ?open_files, mode = ?mode, "SMTP listeners ready");

    let metrics = crate::telemetry::install_metrics()?;
    let health = Arc::new(Health::new(
        config.queue.dir().to_path_buf(),
        counters.clone(),
    ));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let grace = config.queue.shutdown_grace;
    let control = crate::queue::control::serve(
        config.queue.dir(),
        spool.clone(),
        queue.clone(),
        counters,
        stop.clone(),
    )
    .map_err(AppError::Control)?;
    tasks.spawn(control);
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    tasks.spawn(reload_on_sighup(reload, config_tx, stop.clone()));
    tasks.spawn(scheduler.run(recovered.entries, stop.clone(), tasks.clone()));
    if let Some(tokens) = followed_tokens {
        let queue = queue.clone();
        let credentials_changed = move || {
            queue.command(crate::queue::scheduler::Command::CredentialsChanged);
        };
        tasks.spawn(tokens.follow(config_rx.clone(), stop.clone(), credentials_changed));
    }

    // SMTP listeners: certificate and users reload with the configuration.
    let (security_tx, security_rx) = watch::channel(Arc::new(security));
    tasks.spawn(crate::smtp::security::reload_on_change(
        config_rx.clone(),
        security_tx,
        stop.clone(),
    ));
    let (lockout, connections) = (
        Arc::new(Lockout::default()),
        Arc::new(Connections::default()),
    );
    for (name, socket) in bound {
        let ctx = Arc::new(SessionContext {
            config: config_rx.clone(),
            spool: spool.clone(),
            queue: queue.clone(),
            listener: name,
            security: security_rx.clone(),
            lockout: lockout.clone(),
        });
        let listener = Listener::new(socket, ctx, connections.clone());
        tasks.spawn(listener.run(stop.clone(), tasks.clone()));
    }
    tasks.spawn(crate::http::serve(
        http_listener,
        health.clone(),
        metrics,
        stop.clone(),
    ));
    health.set_smtp_listening();
    notify_systemd(&[NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tasks.spawn(feed_watchdog(interval / 2, stop.clone()));
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing open work");
    health.set_stopping();
    notify_systemd(&[NotifyState::Stopping]);
    stop.cancel();
    tasks.close();
    tokio::select! {
        finished = tokio::time::timeout(grace, tasks.wait()) => {
            if finished.is_err() {
                tracing::warn!(
                    grace_s = grace.as_secs_f64(),
                    "grace period over; unfinished deliveries stay in the spool"
                );
            }
        }
        // Everything acknowledged is on disk already; nothing is lost by leaving now.
        () = shutdown_signal() => {
            tracing::warn!("second signal: exiting now; unfinished deliveries stay in the spool");
        }
    }
    Ok(())
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { key, addr, source })
}

fn local_addr(
    key: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, AppError> {
    listener
        .local_addr()
        .map_err(|source| AppError::Bind { key, addr, source })
}

/// Tells systemd (Type=notify) about the service's state; a no-op outside systemd.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog while the runtime is alive (`WatchdogSec=` in the unit).
async fn feed_watchdog(every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => notify_systemd(&[NotifyState::Watchdog]),
        }
    }
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

/// Sections whose values are read once at start (everything but `[smtp]` and `[auth]` so far).
fn sections_needing_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let section = |config: &Config, name: &str| {
        serde_json::to_value(config)
            .map(|value| value[name].clone())
            .ok()
    };
    let mut changed: Vec<&'static str> = ["http", "graph", "queue"]
        .into_iter()
        .filter(|name| section(old, name) != section(new, name))
        .collect();
    if old.smtp.listen != new.smtp.listen {
        changed.push("smtp.listen");
    }
    let addresses = |config: &Config| -> Vec<_> {
        config
            .smtp
            .all_listeners()
            .into_iter()
            .map(|(name, l)| (name, l.address, l.mode))
            .collect()
    };
    if addresses(old) != addresses(new) {
        changed.push("smtp.listeners");
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
