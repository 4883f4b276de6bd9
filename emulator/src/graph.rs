//! Emulated Microsoft Graph: `POST /v1.0/users/{id}/sendMail` (JSON and MIME), with Graph's
//! authentication, authorization, size and routing errors (microsoft-graph.md §2, §3, §5).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::message::{self, GraphError};
use crate::state::{
    AcceptedMail, FaultTarget, IssuedToken, MailContent, Rejection, Shared, TokenCheck,
};
use crate::util::{graph_date, guid, percent_decode};

/// Graph's per-request limit: 4 MiB (§3).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How much of an oversized body is read before answering 413. Reading it (instead of
/// answering mid-upload) lets the client see the 413 rather than a connection reset.
const MAX_READ_BYTES: usize = 8 * MAX_REQUEST_BYTES;

/// `WWW-Authenticate` of Graph's 401 (I: microsofthackathons/tdi#24).
const WWW_AUTHENTICATE: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"";

/// Ids Graph puts in headers and in `innerError`.
struct Ids {
    request_id: String,
    client_request_id: String,
}

/// Handles every request outside the token endpoint and the control interface.
pub async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    // Graph answers with the caller's client-request-id, or its own request-id when none came.
    let request_id = guid();
    let client_request_id = request
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| request_id.clone(), str::to_owned);
    let ids = Ids {
        request_id,
        client_request_id,
    };
    let path = request.uri().path().to_owned();
    let mailbox = mailbox(&shared, request.method(), &path);
    // Audited at arrival; a throttled request is answered before any work, as Graph does.
    let throttled = mailbox
        .as_ref()
        .and_then(|m| shared.throttle.arrive(m, &path, Instant::now()));
    let result = if let Some(fault) = throttled {
        Err(GraphError::fault(fault))
    } else if crate::drafts::is_draft_route(request.method(), &path) {
        // Queued faults apply to every Graph request, the draft path's too.
        match shared.take_fault(FaultTarget::Graph) {
            Some(fault) => Err(GraphError::fault(fault)),
            None => crate::drafts::serve(&shared, request).await,
        }
    } else {
        serve(&shared, request)
            .await
            .map(|()| StatusCode::ACCEPTED.into_response())
    };
    match result {
        Ok(response) => with_ids(response, &ids),
        Err(e) => {
            if let (Some(mailbox), Some(retry_after)) = (&mailbox, &e.retry_after) {
                shared
                    .throttle
                    .answered(mailbox, retry_after, Instant::now());
            }
            shared.record_graph_rejection(Rejection {
                path,
                status: e.status.as_u16(),
                code: e.code.clone(),
            });
            error_response(e, &ids)
        }
    }
}

fn with_ids(mut response: Response, ids: &Ids) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("request-id", &ids.request_id),
        ("client-request-id", &ids.client_request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    response
}

fn error_response(e: GraphError, ids: &Ids) -> Response {
    let mut inner = json!({
        "date": graph_date(),
        "request-id": ids.request_id,
        "client-request-id": ids.client_request_id,
    });
    if e.status == StatusCode::TOO_MANY_REQUESTS {
        // Example D's throttling body also carries these.
        inner["code"] = json!("429");
        inner["status"] = json!("429");
        inner["message"] = json!("Please retry after");
    }
    let body = json!({"error": {"code": e.code, "message": e.message, "innerError": inner}});
    let mut response = (e.status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = e.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::RETRY_AFTER, value);
    }
    if e.status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(WWW_AUTHENTICATE),
        );
    }
    with_ids(response, ids)
}

/// What the URL asks for.
enum Route {
    SendMail(String),
    Me,
}

/// The mailbox a Graph request counts against (Graph throttles per app and mailbox), if any.
fn mailbox(shared: &Shared, method: &Method, path: &str) -> Option<String> {
    if crate::drafts::is_draft_route(method, path) {
        return crate::drafts::mailbox(&shared.drafts, method, path);
    }
    match route(method, path) {
        Ok(Route::SendMail(mailbox)) => Some(mailbox),
        _ => None,
    }
}

/// Only `POST /v1.0/users/{id}/sendMail`; segment names compare case-insensitively as in Graph.
fn route(method: &Method, path: &str) -> Result<Route, GraphError> {
    // Graph answers unknown segments with 400 "Resource not found for the segment"; the
    // emulator simply answers everything it does not serve with 404 ResourceNotFound.
    let not_found = || {
        GraphError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "Resource could not be discovered.",
        )
    };
    let segments: Vec<&str> = path.split('/').collect();
    if *method != Method::POST {
        return Err(not_found());
    }
    match segments.as_slice() {
        ["", version, users, id, action]
            if version.eq_ignore_ascii_case("v1.0")
                && users.eq_ignore_ascii_case("users")
                && action.eq_ignore_ascii_case("sendMail")
                && !id.is_empty() =>
        {
            Ok(Route::SendMail(percent_decode(id, false)))
        }
        ["", version, me, action]
            if version.eq_ignore_ascii_case("v1.0")
                && me.eq_ignore_ascii_case("me")
                && action.eq_ignore_ascii_case("sendMail") =>
        {
            Ok(Route::Me)
        }
        _ => Err(not_found()),
    }
}

pub(crate) fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<IssuedToken, GraphError> {
    let unauthenticated = |message: &str| {
        GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        // Graph's text for a missing token is not in the doc (observed wording, UNCONFIRMED).
        .ok_or_else(|| unauthenticated("Access token is empty."))?;
    match shared.check_token(token) {
        TokenCheck::Valid(issued) => Ok(issued),
        // A revoked token is reported like an expired one: Graph cannot tell them apart.
        TokenCheck::Expired => Err(unauthenticated(
            "Access token has expired or is not yet valid.",
        )),
        TokenCheck::Unknown => Err(unauthenticated(
            "CompactToken validation failed with reason code: 80049228.",
        )),
    }
}

async fn serve(shared: &Arc<Shared>, request: Request) -> Result<(), GraphError> {
    let (parts, body) = request.into_parts();
    let route = route(&parts.method, parts.uri.path());
    // Count the request in flight for its mailbox for its whole life, latency included.
    let (_in_flight, concurrent) = match &route {
        Ok(Route::SendMail(mailbox)) => {
            let (guard, n) = shared.enter(mailbox);
            (Some(guard), n)
        }
        _ => (None, 0),
    };
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    if let Some(fault) = shared.take_fault(FaultTarget::Graph) {
        return Err(GraphError::fault(fault));
    }
    let body = to_bytes(body, MAX_READ_BYTES)
        .await
        .map_err(|_| too_large())?;

    let token = authenticate(shared, &parts.headers)?;
    let mailbox = match route? {
        Route::SendMail(mailbox) => mailbox,
        Route::Me => {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            ));
        }
    };
    if shared
        .config
        .max_concurrent_per_mailbox
        .is_some_and(|max| concurrent > max)
    {
        return Err(GraphError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        ));
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(too_large());
    }
    // base64 MIME or JSON: the message is at least three quarters of the request.
    if body.len() / 4 * 3 > shared.config.max_message_size {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            "ErrorMessageSizeExceeded",
            "The message exceeds the maximum supported size.",
        ));
    }
    let same = |a: &String| a.eq_ignore_ascii_case(&mailbox);
    if !token.roles.iter().any(|r| r == "Mail.Send") && !token.rbac_mailboxes.iter().any(same) {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ));
    }
    if shared
        .config
        .mailboxes
        .as_ref()
        .is_some_and(|list| !list.iter().any(same))
    {
        return Err(GraphError::new(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            format!("The requested user '{mailbox}' is invalid."),
        ));
    }

    let media_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let (content, from) = match media_type.as_str() {
        "application/json" => {
            let checked = message::check_json(&body)?;
            (MailContent::Json(checked.body), checked.from)
        }
        "text/plain" => {
            let checked = message::check_mime(&body)?;
            (MailContent::Mime(checked.mime), checked.from)
        }
        // Graph's answer to other media types is UNCONFIRMED; 415 is HTTP's.
        other => {
            return Err(GraphError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "The content type '{other}' is not supported. Use application/json or text/plain."
                ),
            ));
        }
    };
    if let Some(from) = from {
        let allowed =
            from.eq_ignore_ascii_case(&mailbox)
                || shared.config.send_as.iter().any(|(m, f)| {
                    m.eq_ignore_ascii_case(&mailbox) && f.eq_ignore_ascii_case(&from)
                });
        if !allowed {
            return Err(GraphError::new(
                StatusCode::FORBIDDEN,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.",
            ));
        }
    }
    shared.record_accepted(AcceptedMail {
        mailbox,
        client_id: token.client_id,
        client_request_id: parts
            .headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content,
        received_at: SystemTime::now(),
    });
    Ok(())
}

pub(crate) fn too_large() -> GraphError {
    GraphError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        "The maximum request length supported is 4MB.",
    )
}
