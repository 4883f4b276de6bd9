//! The operations endpoint on `http.listen`: `/metrics` (Prometheus), `/healthz` (the process
//! answers) and `/readyz` (listeners bound, spool writable, not shutting down). Microsoft's health
//! is reported in `/readyz`'s body and as a metric but never makes the relay unready: the spool
//! exists to ride out Microsoft outages, and a sidecar's readiness gates its whole pod.
//! [`probe`] is the client side, used by `graph-relay health`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::queue::metrics::Counters;

/// What readiness is made of, updated by the parts that know.
#[derive(Debug)]
pub struct Health {
    smtp_listening: AtomicBool,
    stopping: AtomicBool,
    spool_dir: PathBuf,
    /// The delivery engine's counters, which know Microsoft's last state per profile.
    counters: Arc<Counters>,
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    smtp_listening: bool,
    spool_writable: bool,
    shutting_down: bool,
    /// "up" or "down" per authentication profile; absent until the first attempt.
    upstream: BTreeMap<String, &'static str>,
}

impl Health {
    pub fn new(spool_dir: PathBuf, counters: Arc<Counters>) -> Self {
        Self {
            smtp_listening: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            spool_dir,
            counters,
        }
    }

    pub fn set_smtp_listening(&self) {
        self.smtp_listening.store(true, Ordering::Release);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Creating and removing a file is the only honest test that the spool accepts writes.
    fn spool_writable(&self) -> bool {
        let probe = self.spool_dir.join(".readyz-probe");
        let written = std::fs::write(&probe, b"").is_ok();
        let _ = std::fs::remove_file(&probe);
        written
    }

    fn readiness(&self) -> Readiness {
        let smtp_listening = self.smtp_listening.load(Ordering::Acquire);
        let shutting_down = self.stopping.load(Ordering::Acquire);
        let spool_writable = self.spool_writable();
        let upstream = self
            .counters
            .upstream_states()
            .into_iter()
            .map(|(profile, up)| (profile, if up { "up" } else { "down" }))
            .collect();
        Readiness {
            ready: smtp_listening && spool_writable && !shutting_down,
            smtp_listening,
            spool_writable,
            shutting_down,
            upstream,
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Serves the endpoint until `stop`.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Endpoint { health, metrics });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "operations endpoint failed");
    }
}

async fn render_metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        endpoint.metrics.render(),
    )
}

async fn readyz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let health = endpoint.health.clone();
    let readiness = tokio::task::spawn_blocking(move || health.readiness())
        .await
        .unwrap_or(Readiness {
            ready: false,
            smtp_listening: false,
            spool_writable: false,
            shutting_down: false,
            upstream: BTreeMap::new(),
        });
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&readiness).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "no answer from http://{addr}{path}: {reason} (is graph-relay serving on http.listen?)"
    )]
    Unreachable {
        addr: SocketAddr,
        path: &'static str,
        reason: String,
    },
    #[error("http://{addr}{path} answered {status}: {body}")]
    NotOk {
        addr: SocketAddr,
        path: &'static str,
        status: u16,
        body: String,
    },
}

/// Asks a running relay whether it is alive (`/healthz`) or ready (`/readyz`).
///
/// # Errors
/// No answer, or an answer other than 200.
pub async fn probe(listen: SocketAddr, ready: bool) -> Result<String, ProbeError> {
    let addr = crate::config::connectable(listen);
    let path = if ready { "/readyz" } else { "/healthz" };
    let unreachable = |err: reqwest::Error| ProbeError::Unreachable {
        addr,
        path,
        reason: crate::graph::token::error_chain(&err),
    };
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(unreachable)?;
    if status == 200 {
        Ok(body)
    } else {
        Err(ProbeError::NotOk {
            addr,
            path,
            status,
            body: body.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_listener_and_writable_spool_but_not_microsoft() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(Counters::default());
        let health = Health::new(dir.path().to_path_buf(), counters.clone());
        assert!(!health.readiness().ready, "not listening yet");
        health.set_smtp_listening();
        counters.upstream("default", false);
        let readiness = health.readiness();
        assert!(
            readiness.ready,
            "Microsoft being down does not make the relay unready"
        );
        assert_eq!(readiness.upstream["default"], "down");
        health.set_stopping();
        assert!(!health.readiness().ready);

        let gone = Health::new(dir.path().join("missing"), counters);
        gone.set_smtp_listening();
        assert!(!gone.readiness().spool_writable);
    }
}
