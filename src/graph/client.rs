//! The Graph HTTP client: `POST {graph.endpoint}/users/{sender}/sendMail` with a bearer token, and
//! the classification of every answer into delivered, retry later, or refused for good.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::token::{AccessToken, error_chain};
use crate::config::GraphConfig;
use crate::telemetry::GRAPH_REQUEST_DURATION;

/// One pooled HTTP client for Graph and Entra, with timeouts on every request.
///
/// # Errors
/// The TLS backend could not be initialised.
pub fn http_client(config: &GraphConfig) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("graph-relay/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // Only graph.proxy (which defaults to $HTTPS_PROXY) applies, never for loopback.
        .no_proxy();
    if let Some(proxy) = &config.proxy {
        builder = builder.proxy(
            reqwest::Proxy::all(proxy.as_str())?
                .no_proxy(reqwest::NoProxy::from_string("localhost,127.0.0.0/8,::1")),
        );
    }
    if let Some(pem) = &config.ca_pem {
        builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
    }
    builder.build()
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
    Unreachable {
        reason: String,
        /// The connection was made, so the request may have reached Graph and been accepted:
        /// a retry can send the message twice.
        outcome_unknown: bool,
    },
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

    /// Graph asked for less traffic to the mailbox (429, 503): no request should follow
    /// until the pause is over.
    pub fn is_throttled(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                status: 429 | 503,
                ..
            }
        )
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
        let started = std::time::Instant::now();
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
                // Only a failed connect proves Graph never saw the request.
                outcome_unknown: !err.is_connect(),
            })?;
        let status = response.status().as_u16();
        metrics::histogram!(GRAPH_REQUEST_DURATION).record(started.elapsed().as_secs_f64());
        let headers = response.headers().clone();
        let request_id = header_text(&headers, "request-id");
        if status == 202 {
            return Ok(Accepted {
                request_id,
                client_request_id,
            });
        }
        // What Microsoft support asks for about a refused request.
        tracing::info!(
            status,
            client_request_id,
            request_id = request_id.as_deref().unwrap_or_default(),
            date = header_text(&headers, "date").unwrap_or_default(),
            x_ms_ags_diagnostic = header_text(&headers, "x-ms-ags-diagnostic").unwrap_or_default(),
            "Graph refused the request"
        );
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
            .and_then(|value| parse_retry_after(value, std::time::SystemTime::now())),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After` as decimal seconds (Graph sends `10` and `2.128`), rounded up to the
/// millisecond, or as an HTTP date (RFC 9110), measured from `now`; a date in the past is 0.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_millis((seconds * 1000.0).ceil() as u64));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
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
    fn retry_after_accepts_integer_fractional_seconds_and_http_dates() {
        // 2015-10-21T07:28:00Z
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let cases = [
            ("10", Some(10_000)),
            ("2.128", Some(2_128)),
            ("0.0001", Some(1)),
            (" 0 ", Some(0)),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(30_000)),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(60_000)),
            ("Wed Oct 21 07:28:05 2015", Some(5_000)),
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(0)),
            ("-1", None),
            ("NaN", None),
            ("soon", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                expected.map(Duration::from_millis),
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
                reason: "reset".into(),
                outcome_unknown: true,
            }
            .is_retryable()
        );
    }
}
