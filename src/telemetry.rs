//! Logs and metrics: the tracing subscriber (text or JSON on stderr, which journald and container
//! runtimes collect) and the Prometheus recorder behind `/metrics`. Metric names are fixed here,
//! once, because dashboards and alerts depend on them.

use std::io::IsTerminal;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Messages acknowledged with `250` (durably spooled).
pub const MESSAGES_RECEIVED: &str = "graph_relay_messages_received_total";
/// Messages Graph accepted (`202`).
pub const MESSAGES_DELIVERED: &str = "graph_relay_messages_delivered_total";
/// Attempts that ended in "try again later".
pub const MESSAGES_RETRIED: &str = "graph_relay_messages_retried_total";
/// Retries of requests whose outcome was unknown (Graph may have accepted them): the bound on
/// duplicates, since Graph has no idempotency key.
pub const AMBIGUOUS_RETRIES: &str = "graph_relay_ambiguous_retries_total";
/// Attempts stopped by a configuration fault (permissions, licence, credentials).
pub const CONFIG_FAULTS: &str = "graph_relay_config_faults_total";
/// Messages moved to `failed/`, by `reason`.
pub const MESSAGES_FAILED: &str = "graph_relay_messages_failed_total";
/// Spooled messages, by `state`.
pub const QUEUE_MESSAGES: &str = "graph_relay_queue_messages";
/// Age of the oldest spooled message.
pub const QUEUE_OLDEST_AGE: &str = "graph_relay_queue_oldest_age_seconds";
/// Duration of Graph requests.
pub const GRAPH_REQUEST_DURATION: &str = "graph_relay_graph_request_duration_seconds";
/// Graph answers 429/503 (throttling), by `mailbox`.
pub const GRAPH_THROTTLED: &str = "graph_relay_graph_throttled_total";
/// Token requests to Entra, by `outcome`.
pub const TOKEN_REQUESTS: &str = "graph_relay_token_requests_total";
/// Recipients sent to over the last 24 hours, by `mailbox` (Exchange allows 10,000).
pub const RECIPIENTS_24H: &str = "graph_relay_recipients_24h";
/// When the client secret expires (Unix seconds).
pub const SECRET_EXPIRY: &str = "graph_relay_secret_expiry_timestamp_seconds";
/// Whether the last exchange with Entra and Graph succeeded, by `profile` (1 up, 0 down).
pub const UPSTREAM_UP: &str = "graph_relay_upstream_up";

/// Installs the log subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests running several commands in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the process-wide metrics recorder and returns the handle `/metrics` renders.
///
/// # Errors
/// A recorder is already installed.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(GRAPH_REQUEST_DURATION.into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0],
        )?
        .install_recorder()
}
