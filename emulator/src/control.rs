//! Control interface under `/_emulator/...`: fault injection and recorded traffic over HTTP,
//! for the standalone binary (tests in Rust use the [`crate::Emulator`] methods instead).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::state::{Fault, MailContent, Shared};
use crate::throttle::Throttling;

/// The `/_emulator` routes.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/faults", post(add_fault).delete(clear_faults))
        .route("/accepted", get(accepted))
        .route("/rejected", get(rejected))
        .route("/stats", get(stats))
        .route("/revoke", post(revoke))
        .route("/throttling", put(set_throttling).delete(stop_throttling))
        .route("/retry-after-audit", get(retry_after_audit))
}

async fn add_fault(State(shared): State<Arc<Shared>>, Json(fault): Json<Fault>) -> Response {
    if !(400..=599).contains(&fault.status) || fault.count == 0 {
        let error = json!({"error": "status must be 400..=599 and count at least 1"});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    shared.inject(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.clear_faults();
    StatusCode::NO_CONTENT
}

async fn set_throttling(
    State(shared): State<Arc<Shared>>,
    Json(throttling): Json<Throttling>,
) -> Response {
    if let Err(e) = throttling.validate() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response();
    }
    shared.throttle.set(Some(throttling));
    StatusCode::NO_CONTENT.into_response()
}

async fn stop_throttling(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.throttle.set(None);
    StatusCode::NO_CONTENT
}

async fn retry_after_audit(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(shared.throttle.audit()))
}

async fn revoke(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.revoke_tokens();
    StatusCode::NO_CONTENT
}

/// Accepted mail as JSON; MIME bytes are base64 so the listing stays valid JSON.
async fn accepted(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let list: Vec<Value> = shared
        .accepted()
        .into_iter()
        .map(|mail| {
            let mut entry = json!({
                "mailbox": mail.mailbox,
                "client_id": mail.client_id,
                "client_request_id": mail.client_request_id,
                "content_type": mail.content.content_type(),
                "received_at_ms": mail.received_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            });
            match mail.content {
                MailContent::Json(body) => entry["body"] = body,
                MailContent::Mime(bytes) => entry["mime_base64"] = json!(STANDARD.encode(bytes)),
            }
            entry
        })
        .collect();
    Json(Value::Array(list))
}

async fn rejected(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(shared.rejected()))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(shared.stats()))
}
