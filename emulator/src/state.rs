//! Shared emulator state: issued tokens, queued faults, recorded requests and counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::EmulatorConfig;

/// Which endpoint a [`Fault`] hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultTarget {
    /// Graph (`/v1.0/...`).
    Graph,
    /// The token endpoint.
    Token,
}

/// An injected failure: the next `count` requests to `target` get `status` instead of service.
#[derive(Clone, Debug, Deserialize)]
pub struct Fault {
    /// Endpoint to fail.
    pub target: FaultTarget,
    /// HTTP status to answer, e.g. 429 or 503.
    pub status: u16,
    /// How many requests to fail.
    #[serde(default = "one")]
    pub count: usize,
    /// `Retry-After` header value, verbatim (Graph samples use both `10` and `2.128`).
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Error code in the body; defaults to Microsoft's code for the status
    /// (e.g. `ApplicationThrottled` instead of `TooManyRequests`).
    #[serde(default)]
    pub code: Option<String>,
}

fn one() -> usize {
    1
}

impl Fault {
    /// Fails the next `count` Graph requests with `status`.
    pub fn graph(status: u16, count: usize) -> Self {
        Self {
            target: FaultTarget::Graph,
            status,
            count,
            retry_after: None,
            code: None,
        }
    }

    /// Fails the next `count` token requests with `status`.
    pub fn token(status: u16, count: usize) -> Self {
        Self {
            target: FaultTarget::Token,
            ..Self::graph(status, count)
        }
    }

    /// Adds a `Retry-After` header.
    #[must_use]
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Overrides the error code in the body.
    #[must_use]
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

/// A sendMail request that got `202 Accepted`.
#[derive(Clone, Debug)]
pub struct AcceptedMail {
    /// Mailbox from the URL, percent-decoded, as sent.
    pub mailbox: String,
    /// The client id of the token used.
    pub client_id: String,
    /// The request's `client-request-id` header.
    pub client_request_id: Option<String>,
    /// The payload.
    pub content: MailContent,
    /// When it was accepted.
    pub received_at: SystemTime,
}

/// The payload of an accepted sendMail, by content type.
#[derive(Clone, Debug)]
pub enum MailContent {
    /// `application/json`: the whole request body.
    Json(serde_json::Value),
    /// `text/plain`: the base64-decoded RFC 5322 message.
    Mime(Vec<u8>),
}

impl MailContent {
    /// The request's media type.
    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Json(_) => "application/json",
            Self::Mime(_) => "text/plain",
        }
    }
}

/// A refused request (including injected faults).
#[derive(Clone, Debug, Serialize)]
pub struct Rejection {
    /// Request path.
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// Graph error code, or for the token endpoint `AADSTSnnnn` (the `error_codes` entry).
    pub code: String,
}

/// Counters, for assertions and `GET /_emulator/stats`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Tokens issued.
    pub tokens_issued: usize,
    /// Token requests refused.
    pub tokens_refused: usize,
    /// sendMail requests accepted.
    pub accepted: usize,
    /// Graph requests refused.
    pub rejected: usize,
    /// Highest number of simultaneous sendMail requests seen, per lower-cased mailbox.
    pub max_in_flight: BTreeMap<String, usize>,
}

/// What the emulator remembers about a token it issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub client_id: String,
    pub roles: Vec<String>,
    pub rbac_mailboxes: Vec<String>,
    pub expires_at: Instant,
    pub revoked: bool,
}

/// Outcome of looking a bearer token up.
pub enum TokenCheck {
    Valid(IssuedToken),
    /// Expired or revoked.
    Expired,
    /// Not issued by this emulator.
    Unknown,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, IssuedToken>,
    faults: VecDeque<Fault>,
    accepted: Vec<AcceptedMail>,
    rejected: Vec<Rejection>,
    stats: Stats,
    in_flight: HashMap<String, usize>,
}

/// State shared by all handlers. The mutex is never held across an `.await`.
pub struct Shared {
    pub config: EmulatorConfig,
    inner: Mutex<Inner>,
    /// Drafts and upload sessions of the large-message path.
    pub drafts: crate::drafts::Drafts,
    /// Random throttling and the Retry-After audit.
    pub throttle: crate::throttle::Throttle,
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
            drafts: crate::drafts::Drafts::default(),
            throttle: crate::throttle::Throttle::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not wedge the emulator for the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        if fault.count > 0 {
            self.lock().faults.push_back(fault);
        }
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Consumes one use of the first queued fault for `target`, if any.
    pub fn take_fault(&self, target: FaultTarget) -> Option<Fault> {
        let mut inner = self.lock();
        let pos = inner.faults.iter().position(|f| f.target == target)?;
        let fault = inner.faults[pos].clone();
        inner.faults[pos].count -= 1;
        if inner.faults[pos].count == 0 {
            inner.faults.remove(pos);
        }
        Some(fault)
    }

    pub fn store_token(&self, token: String, issued: IssuedToken) {
        let mut inner = self.lock();
        inner.tokens.insert(token, issued);
        inner.stats.tokens_issued += 1;
    }

    pub fn check_token(&self, token: &str) -> TokenCheck {
        match self.lock().tokens.get(token) {
            None => TokenCheck::Unknown,
            Some(t) if t.revoked || t.expires_at <= Instant::now() => TokenCheck::Expired,
            Some(t) => TokenCheck::Valid(t.clone()),
        }
    }

    pub fn revoke_tokens(&self) {
        for token in self.lock().tokens.values_mut() {
            token.revoked = true;
        }
    }

    pub fn record_token_refusal(&self, rejection: Rejection) {
        let mut inner = self.lock();
        inner.stats.tokens_refused += 1;
        inner.rejected.push(rejection);
    }

    pub fn record_graph_rejection(&self, rejection: Rejection) {
        let mut inner = self.lock();
        inner.stats.rejected += 1;
        inner.rejected.push(rejection);
    }

    pub fn record_accepted(&self, mail: AcceptedMail) {
        let mut inner = self.lock();
        inner.stats.accepted += 1;
        if self.config.record_accepted {
            inner.accepted.push(mail);
        }
    }

    pub fn accepted(&self) -> Vec<AcceptedMail> {
        self.lock().accepted.clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.lock().stats.accepted
    }

    pub fn rejected(&self) -> Vec<Rejection> {
        self.lock().rejected.clone()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Marks one more request in flight for `mailbox`; returns the guard and the new count.
    pub fn enter(self: &Arc<Self>, mailbox: &str) -> (InFlight, usize) {
        let key = mailbox.to_lowercase();
        let mut inner = self.lock();
        let now = {
            let n = inner.in_flight.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let max = inner.stats.max_in_flight.entry(key.clone()).or_insert(0);
        *max = (*max).max(now);
        drop(inner);
        let guard = InFlight {
            shared: Arc::clone(self),
            key,
        };
        (guard, now)
    }
}

/// Decrements the mailbox's in-flight count when the request ends, however it ends.
pub struct InFlight {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.shared.lock().in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}
