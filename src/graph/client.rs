//! The Graph HTTP client: `POST {graph.endpoint}/users/{sender}/sendMail` with a bearer token, and
//! the classification of every answer into delivered, retry later, or refused for good.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::token::{AccessToken, error_chain};
use crate::config::GraphConfig;

/// One pooled HTTP client for Graph and Entra, with timeouts on every request.
///
/// # Errors
/// The TLS backend could not be initialised.
pub fn http_client(config: &GraphConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("graph-relay/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

/// The sendMail URL of a mailbox: the address is one percent-encoded path segment.
pub fn send_mail_url(endpoint: &url::Url, sender: &str) -> url::Url {
    let mut url = endpoint.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["users", sender, "sendMail"]);
    }
    url
}

/// Graph accepted the message (`202`).
#[derive(Debug)]
pub struct Accepted {
    /// Graph's `request-id`, which Microsoft support asks for.
    pub request_id: Option<String>,
    pub client_request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error status.
    #[error(
        "Graph answered HTTP {status} {code}: {message}{}",
        request_suffix(request_id)
    )]
    Refused {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },
    /// No answer: connection failed, reset or timed out. If the request had been sent, Graph may
    /// have accepted it.
    #[error("Graph could not be reached: {reason}")]
    Unreachable { reason: String },
}

fn request_suffix(request_id: &Option<String>) -> String {
    request_id
        .as_ref()
        .map(|id| format!(" (request-id {id})"))
        .unwrap_or_default()
}

impl GraphError {
    /// Whether a later attempt can succeed: outages, throttling, an expired token and transport
    /// failures can; a request Graph refused as invalid or forbidden cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => matches!(status, 401 | 408 | 429) || *status >= 500,
        }
    }

    /// Graph rejected the token itself: fetch a new one.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Refused { status: 401, .. })
    }

    /// Graph refused the request for its size (413, or 400 "maximum request length"): the
    /// message needs the draft and upload-session path.
    pub fn is_request_too_large(&self) -> bool {
        match self {
            Self::Refused {
                status, message, ..
            } => *status == 413 || message.contains("maximum request length"),
            Self::Unreachable { .. } => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } => *retry_after,
            Self::Unreachable { .. } => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

pub struct GraphClient {
    pub(super) http: reqwest::Client,
    pub(super) endpoint: url::Url,
}

impl GraphClient {
    pub fn new(http: reqwest::Client, endpoint: url::Url) -> Self {
        Self { http, endpoint }
    }

    /// Sends one sendMail request body: `application/json`, or `text/plain` for base64 MIME.
    ///
    /// # Errors
    /// Graph refused the request or could not be reached; see [`GraphError::is_retryable`].
    pub async fn send_mail(
        &self,
        token: &AccessToken,
        sender: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Accepted, GraphError> {
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let response = self
            .http
            .post(send_mail_url(&self.endpoint, sender))
            .header(AUTHORIZATION, format!("Bearer {}", token.secret()))
            .header(CONTENT_TYPE, content_type)
            .header("client-request-id", &client_request_id)
            .body(body)
            .send()
            .await
            .map_err(|err| GraphError::Unreachable {
                reason: error_chain(&err),
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let request_id = header_text(&headers, "request-id");
        if status == 202 {
            return Ok(Accepted {
                request_id,
                client_request_id,
            });
        }
        Err(refusal(response).await)
    }
}

/// A non-success answer as [`GraphError::Refused`], with Graph's error code and message.
pub(super) async fn refusal(response: reqwest::Response) -> GraphError {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(parsed) => (parsed.error.code, parsed.error.message),
        Err(_) => (
            "(no Graph error body)".to_string(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    GraphError::Refused {
        status,
        code,
        message,
        request_id: header_text(&headers, "request-id"),
        retry_after: header_text(&headers, RETRY_AFTER.as_str())
            .as_deref()
            .and_then(parse_retry_after),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After` as decimal seconds (Graph sends `10` and `2.128`), rounded up.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs(seconds.ceil() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_is_one_percent_encoded_path_segment() {
        let endpoint = url::Url::parse("https://graph.microsoft.com/v1.0").unwrap();
        let cases = [
            (
                "billing@contoso.com",
                "/v1.0/users/billing@contoso.com/sendMail",
            ),
            ("a/b@contoso.com", "/v1.0/users/a%2Fb@contoso.com/sendMail"),
            (
                "o'brien?x@contoso.com",
                "/v1.0/users/o'brien%3Fx@contoso.com/sendMail",
            ),
            (
                "with space@contoso.com",
                "/v1.0/users/with%20space@contoso.com/sendMail",
            ),
        ];
        for (sender, path) in cases {
            assert_eq!(send_mail_url(&endpoint, sender).path(), path, "{sender}");
        }
        let trailing = url::Url::parse("http://127.0.0.1:1/v1.0/").unwrap();
        assert_eq!(
            send_mail_url(&trailing, "a@b").path(),
            "/v1.0/users/a@b/sendMail"
        );
    }

    #[test]
    fn retry_after_accepts_integer_and_fractional_seconds() {
        let cases = [
            ("10", Some(10)),
            ("2.128", Some(3)),
            (" 0 ", Some(0)),
            ("-1", None),
            ("soon", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_retry_after(value),
                expected.map(Duration::from_secs),
                "{value}"
            );
        }
    }

    #[test]
    fn refusals_are_permanent_and_outages_are_not() {
        let refused = |status| GraphError::Refused {
            status,
            code: "x".into(),
            message: "m".into(),
            request_id: None,
            retry_after: None,
        };
        for status in [400, 403, 404, 413, 415] {
            assert!(!refused(status).is_retryable(), "{status}");
        }
        for status in [401, 408, 429, 500, 502, 503, 504] {
            assert!(refused(status).is_retryable(), "{status}");
        }
        // The size refusals that send a message down the upload path.
        assert!(refused(413).is_request_too_large());
        let too_long = GraphError::Refused {
            status: 400,
            code: "BadRequest".into(),
            message: "The maximum request length supported is 4MB.".into(),
            request_id: None,
            retry_after: None,
        };
        assert!(too_long.is_request_too_large());
        assert!(!refused(400).is_request_too_large());
        assert!(
            GraphError::Unreachable {
                reason: "reset".into()
            }
            .is_retryable()
        );
    }
}
