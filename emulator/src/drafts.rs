//! Emulated draft path for large messages (microsoft-graph.md §3, example C): `POST
//! /users/{id}/messages` (201 draft), `POST .../attachments` (small attachments),
//! `POST .../attachments/createUploadSession` (3 MB or more only), chunked `PUT` to the upload
//! URL without an Authorization header, `POST .../send` (202) and `DELETE` of a draft. Drafts
//! need `Mail.ReadWrite`, sending `Mail.Send`; the tenant's message size limit applies at send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::graph::{authenticate, too_large};
use crate::message::{self, GraphError};
use crate::state::{AcceptedMail, MailContent, Shared};
use crate::util::{graph_expiry, guid, percent_decode, unix_now};

/// Graph's per-request and per-chunk limit (§3).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Smallest attachment an upload session takes: "3 MB" in the docs (decimal here, UNCONFIRMED).
pub const MIN_UPLOAD_SESSION_SIZE: usize = 3_000_000;
/// Largest file an upload session takes (§3).
const MAX_UPLOAD_SESSION_SIZE: usize = 150 * 1024 * 1024;

/// Drafts and upload sessions in progress.
#[derive(Default)]
pub struct Drafts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    drafts: HashMap<String, Draft>,
    sessions: HashMap<String, Session>,
    deleted: usize,
}

struct Draft {
    mailbox: String,
    /// The message resource as posted, without attachments.
    message: Value,
    /// fileAttachment objects, uploaded ones with their assembled `contentBytes`.
    attachments: Vec<Value>,
}

struct Session {
    draft_id: String,
    authtoken: String,
    item: Value,
    size: usize,
    received: Vec<u8>,
    expires: Instant,
}

impl Drafts {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drafts that exist now (created, not yet sent or deleted).
    pub fn open(&self) -> usize {
        self.lock().drafts.len()
    }

    /// Drafts removed with `DELETE`.
    pub fn deleted(&self) -> usize {
        self.lock().deleted
    }
}

/// What a draft-path URL asks for.
enum Route {
    Create(String),
    Delete(String, String),
    Attach(String, String),
    CreateSession(String, String),
    Send(String, String),
    Upload(String),
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let user = |id: &str| percent_decode(id, false);
    match (method, segments.as_slice()) {
        (&Method::PUT, ["", "_upload", session]) => Some(Route::Upload((*session).to_owned())),
        (&Method::POST, ["", v, users, id, messages])
            if eq(v, "v1.0") && eq(users, "users") && eq(messages, "messages") =>
        {
            Some(Route::Create(user(id)))
        }
        (&Method::DELETE, ["", v, users, id, messages, draft])
            if eq(v, "v1.0") && eq(users, "users") && eq(messages, "messages") =>
        {
            Some(Route::Delete(user(id), (*draft).to_owned()))
        }
        (&Method::POST, ["", v, users, id, messages, draft, action])
            if eq(v, "v1.0") && eq(users, "users") && eq(messages, "messages") =>
        {
            let (id, draft) = (user(id), (*draft).to_owned());
            if eq(action, "send") {
                Some(Route::Send(id, draft))
            } else if eq(action, "attachments") {
                Some(Route::Attach(id, draft))
            } else {
                None
            }
        }
        (&Method::POST, ["", v, users, id, messages, draft, attachments, action])
            if eq(v, "v1.0")
                && eq(users, "users")
                && eq(messages, "messages")
                && eq(attachments, "attachments")
                && eq(action, "createUploadSession") =>
        {
            Some(Route::CreateSession(user(id), (*draft).to_owned()))
        }
        _ => None,
    }
}

/// Whether the request belongs to the draft path (else it is sendMail's).
pub fn is_draft_route(method: &Method, path: &str) -> bool {
    route(method, path).is_some()
}

/// The mailbox a draft-path request counts against: the one in its URL, or for an upload URL
/// the mailbox of the session's draft (`None` for an unknown session).
pub fn mailbox(drafts: &Drafts, method: &Method, path: &str) -> Option<String> {
    match route(method, path)? {
        Route::Create(mailbox)
        | Route::Delete(mailbox, _)
        | Route::Attach(mailbox, _)
        | Route::CreateSession(mailbox, _)
        | Route::Send(mailbox, _) => Some(mailbox),
        Route::Upload(session) => {
            let inner = drafts.lock();
            let draft = &inner.sessions.get(&session)?.draft_id;
            inner.drafts.get(draft).map(|d| d.mailbox.clone())
        }
    }
}

fn not_found() -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn access_denied() -> GraphError {
    GraphError::new(
        StatusCode::FORBIDDEN,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )
}

fn size_exceeded() -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "ErrorMessageSizeExceeded",
        "The message exceeds the maximum supported size.",
    )
}

fn json_body(bytes: &[u8]) -> Result<Value, GraphError> {
    serde_json::from_slice(bytes).map_err(|_| {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )
    })
}

/// The caller's token must carry `role` (or RBAC for Applications on the mailbox).
fn require(
    shared: &Shared,
    headers: &HeaderMap,
    mailbox: &str,
    role: &str,
) -> Result<(), GraphError> {
    let token = authenticate(shared, headers)?;
    let same = |m: &String| m.eq_ignore_ascii_case(mailbox);
    if token.roles.iter().any(|r| r == role) || token.rbac_mailboxes.iter().any(same) {
        Ok(())
    } else {
        Err(access_denied())
    }
}

/// Serves one draft-path request: the answer, or the Graph error to send instead.
pub async fn serve(shared: &Arc<Shared>, request: Request) -> Result<Response, GraphError> {
    let (parts, body) = request.into_parts();
    let Some(route) = route(&parts.method, parts.uri.path()) else {
        return Err(not_found());
    };
    let body = to_bytes(body, 2 * MAX_REQUEST_BYTES)
        .await
        .map_err(|_| too_large())?;
    if body.len() > MAX_REQUEST_BYTES {
        return Err(too_large());
    }
    let drafts = &shared.drafts;
    match route {
        Route::Create(mailbox) => {
            require(shared, &parts.headers, &mailbox, "Mail.ReadWrite")?;
            let mut message = json_body(&body)?;
            let attachments = match message
                .as_object_mut()
                .and_then(|m| m.remove("attachments"))
            {
                Some(Value::Array(list)) => list,
                _ => Vec::new(),
            };
            let id = format!("AAMkAD{}=", guid().replace('-', ""));
            drafts.lock().drafts.insert(
                id.clone(),
                Draft {
                    mailbox,
                    message,
                    attachments,
                },
            );
            Ok((
                StatusCode::CREATED,
                axum::Json(json!({"id": id, "isDraft": true})),
            )
                .into_response())
        }
        Route::Delete(mailbox, id) => {
            require(shared, &parts.headers, &mailbox, "Mail.ReadWrite")?;
            let mut inner = drafts.lock();
            inner.drafts.remove(&id).ok_or_else(not_found)?;
            inner.sessions.retain(|_, s| s.draft_id != id);
            inner.deleted += 1;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Route::Attach(mailbox, id) => {
            require(shared, &parts.headers, &mailbox, "Mail.ReadWrite")?;
            let attachment = json_body(&body)?;
            let mut inner = drafts.lock();
            let draft = inner.drafts.get_mut(&id).ok_or_else(not_found)?;
            draft.attachments.push(attachment);
            Ok((StatusCode::CREATED, axum::Json(json!({"id": guid()}))).into_response())
        }
        Route::CreateSession(mailbox, id) => {
            require(shared, &parts.headers, &mailbox, "Mail.ReadWrite")?;
            let request = json_body(&body)?;
            let item = request
                .get("AttachmentItem")
                .filter(|i| i.is_object())
                .cloned()
                .ok_or_else(|| {
                    GraphError::new(
                        StatusCode::BAD_REQUEST,
                        "ErrorInvalidParameter",
                        "The value of the parameter 'AttachmentItem' is empty.",
                    )
                })?;
            let size = item.get("size").and_then(Value::as_u64).unwrap_or(0) as usize;
            if size < MIN_UPLOAD_SESSION_SIZE {
                return Err(GraphError::new(
                    StatusCode::BAD_REQUEST,
                    "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                    "Attachment size must be greater than the minimum size.",
                ));
            }
            if size > MAX_UPLOAD_SESSION_SIZE || size > shared.config.max_message_size {
                return Err(size_exceeded());
            }
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1")
                .to_owned();
            let session_id = guid();
            let authtoken = guid().replace('-', "");
            let lifetime = shared.config.upload_session_lifetime;
            {
                let mut inner = drafts.lock();
                if !inner.drafts.contains_key(&id) {
                    return Err(not_found());
                }
                inner.sessions.insert(
                    session_id.clone(),
                    Session {
                        draft_id: id,
                        authtoken: authtoken.clone(),
                        item,
                        size,
                        received: Vec::new(),
                        expires: Instant::now() + lifetime,
                    },
                );
            }
            Ok((
                StatusCode::CREATED,
                axum::Json(json!({
                    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
                    "uploadUrl": format!("http://{host}/_upload/{session_id}?authtoken={authtoken}"),
                    "expirationDateTime": expiry(lifetime),
                    "nextExpectedRanges": ["0-"],
                })),
            )
                .into_response())
        }
        Route::Upload(session_id) => upload(shared, &parts, &session_id, &body),
        Route::Send(mailbox, id) => {
            require(shared, &parts.headers, &mailbox, "Mail.Send")?;
            let draft = drafts.lock().drafts.remove(&id).ok_or_else(not_found)?;
            let Draft {
                mailbox: owner,
                mut message,
                attachments,
            } = draft;
            let size: usize = message.to_string().len()
                + attachments
                    .iter()
                    .map(|a| a["contentBytes"].as_str().map_or(0, |b| b.len() / 4 * 3))
                    .sum::<usize>();
            if size > shared.config.max_message_size {
                return Err(size_exceeded());
            }
            // The same strictness as sendMail (types, recipients, headers, attachments), checked
            // on the message with its posted attachments; uploaded ones were built here.
            let (uploaded, posted): (Vec<Value>, Vec<Value>) = attachments
                .into_iter()
                .partition(|a| a.get("uploaded").is_some());
            message["attachments"] = Value::Array(posted);
            let mut checked =
                message::check_json(json!({"message": message}).to_string().as_bytes())?;
            if let Some(list) = checked.body["message"]["attachments"].as_array_mut() {
                list.extend(uploaded.into_iter().map(|mut a| {
                    a.as_object_mut().map(|m| m.remove("uploaded"));
                    a
                }));
            }
            shared.record_accepted(AcceptedMail {
                mailbox: owner,
                client_id: String::new(),
                client_request_id: parts
                    .headers
                    .get("client-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                content: MailContent::Json(checked.body),
                received_at: SystemTime::now(),
            });
            Ok(StatusCode::ACCEPTED.into_response())
        }
    }
}

/// One chunk to an upload URL: no Authorization header, the URL's own token, ranges in order,
/// at most 4 MiB each; the last one attaches the file to its draft.
fn upload(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    session_id: &str,
    body: &[u8],
) -> Result<Response, GraphError> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        // The docs forbid the header on upload URLs; the real service's answer is UNCONFIRMED.
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "An Authorization header must not be sent to an upload URL.",
        ));
    }
    let token = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("authtoken="))
        .unwrap_or_default()
        .to_owned();
    let range = parts
        .headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range);
    let mut inner = shared.drafts.lock();
    let session = inner
        .sessions
        .get_mut(session_id)
        .filter(|s| s.authtoken == token)
        .ok_or_else(not_found)?;
    if Instant::now() > session.expires {
        inner.sessions.remove(session_id);
        return Err(not_found());
    }
    let invalid_range = |message: String| {
        GraphError::new(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", message)
    };
    let Some((start, end, total)) = range else {
        return Err(invalid_range(
            "A valid Content-Range header is required.".into(),
        ));
    };
    if total != session.size || start != session.received.len() || end + 1 - start != body.len() {
        return Err(invalid_range(format!(
            "Expected bytes {}- of {}, got {start}-{end}/{total} with {} bytes.",
            session.received.len(),
            session.size,
            body.len()
        )));
    }
    session.received.extend_from_slice(body);
    if session.received.len() < session.size {
        let next = session.received.len();
        let remaining = session.expires.saturating_duration_since(Instant::now());
        return Ok((
            StatusCode::OK,
            axum::Json(json!({
                "ExpirationDateTime": expiry(remaining),
                "nextExpectedRanges": [next.to_string()],
            })),
        )
            .into_response());
    }
    let session = inner.sessions.remove(session_id).expect("present above");
    let mut attachment = session.item;
    if let Some(map) = attachment.as_object_mut() {
        map.remove("attachmentType");
        map.remove("size");
    }
    attachment["@odata.type"] = json!("#microsoft.graph.fileAttachment");
    attachment["contentBytes"] = json!(STANDARD.encode(&session.received));
    // Marks it for `send`, which validates only what clients posted (and drops the mark).
    attachment["uploaded"] = json!(true);
    let draft = inner
        .drafts
        .get_mut(&session.draft_id)
        .ok_or_else(not_found)?;
    draft.attachments.push(attachment);
    let location = format!(
        "https://outlook.office.com/api/v2.0/Users('{}')/Messages('{}')/Attachments('{}')",
        draft.mailbox,
        session.draft_id,
        guid()
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// `bytes START-END/TOTAL`, END inclusive.
fn parse_content_range(value: &str) -> Option<(usize, usize, usize)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total) = (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, end, total))
}

/// `expirationDateTime` for a session valid `after` from now.
fn expiry(after: Duration) -> String {
    graph_expiry(unix_now() + after.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-4194303/10485760"),
            Some((0, 4194303, 10485760))
        );
        for bad in ["bytes 5-4/10", "bytes 0-10/10", "0-1/2", "bytes 0-/2"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
