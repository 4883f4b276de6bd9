//! One delivery attempt of one spooled message: load it, convert it, get a token, send it, and
//! say what became of it. The scheduler decides when attempts happen and applies the outcome.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::config::{LargeMessages, MAX_REQUEST_BYTES};
use crate::convert::{self, Converted, SenderMode};
use crate::graph::client::GraphError;
use crate::graph::client::{GraphClient, send_mail_url};
use crate::graph::dry_run::DryRunWriter;
use crate::graph::token::{DEFAULT_PROFILE, TokenError, TokenProvider};
use crate::graph::upload::{self, UploadFailure};
use crate::queue::retry::{Class, Failure, classify};
use crate::queue::scheduler::{Attempt, Lane};
use crate::queue::{EntryMeta, Envelope, Spool, SpoolError};

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Graph answered `202` (or, in dry-run, the request was written).
    Delivered,
    /// Not delivered: the class says what happens next, `retry_after` is Graph's wish.
    NotDelivered {
        class: Class,
        retry_after: Option<Duration>,
        reason: String,
    },
}

impl Outcome {
    fn failure(
        failure: Failure<'_>,
        tries: u32,
        retry_after: Option<Duration>,
        reason: String,
    ) -> Self {
        Self::NotDelivered {
            class: classify(failure, tries),
            retry_after,
            reason,
        }
    }
}

/// Where converted requests go.
pub enum Outbound {
    Graph {
        client: GraphClient,
        tokens: Box<TokenProvider>,
    },
    DryRun(DryRunWriter),
}

pub struct Delivery {
    spool: Arc<Spool>,
    outbound: Outbound,
    endpoint: url::Url,
    fidelity: Fidelity,
}

/// How messages are converted (`[graph]` format, sender, headers) and what happens to those
/// too large for one request.
#[derive(Default)]
pub struct Fidelity {
    pub options: convert::Options,
    pub large_messages: LargeMessages,
}

impl Delivery {
    pub fn new(spool: Arc<Spool>, outbound: Outbound, endpoint: url::Url) -> Self {
        Self {
            spool,
            outbound,
            endpoint,
            fidelity: Fidelity::default(),
        }
    }

    fn upload_enabled(&self) -> bool {
        self.fidelity.large_messages == LargeMessages::Upload
    }

    /// The size ladder's upper rung: draft, attachments, upload sessions, send
    /// ([`crate::graph::upload`]), with the draft id kept in the entry (and the spool) meanwhile.
    /// `raw` is dropped once planned: the large attachments are read from the spool file.
    async fn upload(
        &self,
        client: &GraphClient,
        tokens: &TokenProvider,
        meta: &mut EntryMeta,
        raw: Vec<u8>,
    ) -> Outcome {
        let envelope = &meta.envelope;
        let planned = convert::plan_upload(
            &raw,
            &envelope.mail_from,
            &envelope.rcpt_to,
            &self.options_for(envelope),
        );
        drop(raw);
        let plan = match planned {
            Ok(plan) => plan,
            Err(err) => {
                let reason = format!("cannot convert the message: {err}");
                return Outcome::failure(Failure::Conversion, 0, None, reason);
            }
        };
        let token = match tokens.token_for(&plan.sender).await {
            Ok(token) => token,
            Err(err) => {
                let reason = err.to_string();
                return Outcome::failure(token_failure(&err), 0, None, reason);
            }
        };
        let body = self.spool.entry_path(meta.id);
        let orphan = meta.draft_id.clone();
        // Kept in the entry too: the scheduler persists the entry after the attempt, and the
        // next attempt must find this draft to delete it.
        let persist = |draft_id: &str| {
            meta.draft_id = Some(draft_id.to_owned());
            self.spool.update(meta).map_err(|e| e.to_string())
        };
        match upload::send_by_upload(client, &token, &plan, &body, orphan.as_deref(), persist).await
        {
            Ok(accepted) => {
                tracing::info!(
                    request_id = accepted.request_id.as_deref().unwrap_or(""),
                    attachments_uploaded = plan.large.len(),
                    "Graph accepted the message (draft and upload sessions)"
                );
                Outcome::Delivered
            }
            Err(UploadFailure::Persist(reason)) => {
                let reason = format!("cannot record the draft id in the spool: {reason}");
                Outcome::failure(Failure::Local, 0, None, reason)
            }
            Err(UploadFailure::Spool(reason)) => {
                let reason = format!("cannot read the spooled message: {reason}");
                Outcome::failure(Failure::Local, 0, None, reason)
            }
            Err(UploadFailure::Content(reason)) => {
                Outcome::failure(Failure::Conversion, 0, None, reason)
            }
            Err(UploadFailure::Graph(err)) => {
                let outcome =
                    Outcome::failure(graph_failure(&err), 0, err.retry_after(), err.to_string());
                // The next attempt fetches a new token; the draft is cleaned up before it.
                if matches!(
                    outcome,
                    Outcome::NotDelivered {
                        class: Class::RefreshToken,
                        ..
                    }
                ) {
                    tokens.invalidate_for(&plan.sender).await;
                }
                outcome
            }
        }
    }

    /// The conversion options for one entry: `[graph]`'s, sending as the mailbox chosen at DATA
    /// (by the user's, listener's or `[graph]`'s sender setting) when the entry recorded one.
    fn options_for(&self, envelope: &Envelope) -> Cow<'_, convert::Options> {
        match &envelope.origin {
            Some(origin) => Cow::Owned(convert::Options {
                // The original From still becomes Reply-To when it differs.
                sender: SenderMode::Fixed(origin.sender.clone()),
                ..self.fidelity.options.clone()
            }),
            None => Cow::Borrowed(&self.fidelity.options),
        }
    }

    /// Converts with `fidelity` instead of the defaults.
    pub fn with_fidelity(mut self, fidelity: Fidelity) -> Self {
        self.fidelity = fidelity;
        self
    }

    /// One attempt; what it learns on the way (the draft id of an upload) is recorded in `meta`.
    pub async fn attempt(&self, meta: &mut EntryMeta) -> Outcome {
        let id = meta.id;
        let raw = match self.spool.read_body_async(id).await {
            Ok(raw) => raw,
            // A damaged entry will not heal: it fails now rather than at queue.max_age.
            Err(err @ SpoolError::Damaged { .. }) => {
                return Outcome::failure(Failure::Conversion, 0, None, err.to_string());
            }
            Err(err) => return Outcome::failure(Failure::Local, 0, None, err.to_string()),
        };
        // A raw message above 4 MiB cannot become a smaller request: skip building it.
        if let Outbound::Graph { client, tokens } = &self.outbound
            && self.upload_enabled()
            && raw.len() as u64 > MAX_REQUEST_BYTES
        {
            let span = tracing::info_span!("upload", queue_id = %id);
            return self
                .upload(client, tokens, meta, raw)
                .instrument(span)
                .await;
        }
        let envelope = &meta.envelope;
        let queue_id = id.to_string();
        let arrival = convert::Arrival {
            queue_id: &queue_id,
            received_at: ulid::Ulid::from_string(&queue_id)
                .map_or(0, |ulid| (ulid.timestamp_ms() / 1000) as i64),
        };
        let converted = match convert::convert(
            &raw,
            &envelope.mail_from,
            &envelope.rcpt_to,
            arrival,
            &self.options_for(envelope),
        ) {
            Ok(converted) => converted,
            Err(err) => {
                let reason = format!("cannot convert the message: {err}");
                return Outcome::failure(Failure::Conversion, 0, None, reason);
            }
        };
        if let Some(why) = converted.forced_mime {
            tracing::info!(queue_id = %id, reason = why, "sent in MIME format");
        }
        let (content_type, body) = converted.http_body();
        // Re-checked after conversion: the DATA limit keeps most messages below this.
        if body.len() as u64 > MAX_REQUEST_BYTES && !self.upload_enabled() {
            let reason = format!(
                "the Graph request would be {} bytes, above Graph's 4 MiB request limit; \
                 set graph.large_messages = \"upload\" to send large messages",
                body.len()
            );
            return Outcome::failure(Failure::Conversion, 0, None, reason);
        }
        let Converted {
            sender, message_id, ..
        } = converted;
        match &self.outbound {
            Outbound::DryRun(writer) => {
                let path = send_mail_url(&self.endpoint, &sender).path().to_string();
                match writer.write(id, &path, &body) {
                    Ok(file) => {
                        tracing::info!(queue_id = %id, file = %file.display(), "dry run: request written");
                        Outcome::Delivered
                    }
                    Err(err) => {
                        let reason = format!("dry run: cannot write the request: {err}");
                        Outcome::failure(Failure::Local, 0, None, reason)
                    }
                }
            }
            Outbound::Graph { client, tokens } => {
                // The span puts the original Message-ID on the line with Graph's request-id.
                let span = tracing::info_span!(
                    "send",
                    queue_id = %id,
                    message_id = message_id.as_deref().unwrap_or("")
                );
                let sent = if body.len() as u64 > MAX_REQUEST_BYTES {
                    None
                } else {
                    match send(client, tokens, &sender, content_type, body)
                        .instrument(span.clone())
                        .await
                    {
                        Sent::Done(outcome) => Some(outcome),
                        // Graph's own ceiling (undocumented for MIME) can be below ours.
                        Sent::TooLarge(err) if self.upload_enabled() => {
                            tracing::info!(queue_id = %id, error = %err, "switching to the upload path");
                            None
                        }
                        Sent::TooLarge(err) => Some(Outcome::failure(
                            graph_failure(&err),
                            0,
                            None,
                            err.to_string(),
                        )),
                    }
                };
                let outcome = match sent {
                    Some(outcome) => outcome,
                    None => {
                        self.upload(client, tokens, meta, raw)
                            .instrument(span)
                            .await
                    }
                };
                tracing::info!(
                    queue_id = %id,
                    sender = %sender,
                    message_id = message_id.as_deref().unwrap_or(""),
                    attempt = meta.attempts + 1,
                    outcome = ?outcome,
                    "delivery attempt"
                );
                outcome
            }
        }
    }
}

impl Attempt for Delivery {
    async fn lane(&self, meta: &EntryMeta) -> Lane {
        let sender = match &meta.envelope.origin {
            Some(origin) => origin.sender.clone(),
            // Entries spooled before the sender was recorded at DATA: the mailbox the
            // conversion will choose. A message without a usable sender fails at its attempt,
            // so it may wait in its envelope sender's lane.
            None => {
                let spool = self.spool.clone();
                let meta = meta.clone();
                let options = self.fidelity.options.clone();
                tokio::task::spawn_blocking(move || {
                    spool
                        .read_body(meta.id)
                        .ok()
                        .and_then(|raw| {
                            convert::sender(&raw, &meta.envelope.mail_from, &options).ok()
                        })
                        .unwrap_or(meta.envelope.mail_from)
                })
                .await
                .unwrap_or_default()
            }
        };
        let profile = match &self.outbound {
            Outbound::Graph { tokens, .. } => tokens.profile_for(&sender),
            Outbound::DryRun(_) => DEFAULT_PROFILE.to_string(),
        };
        Lane::new(&profile, &sender)
    }

    async fn attempt(&self, meta: &mut EntryMeta) -> Outcome {
        Delivery::attempt(self, meta).await
    }
}

/// What [`send`] leaves to its caller: an outcome, or Graph's refusal of the request's size.
enum Sent {
    Done(Outcome),
    TooLarge(GraphError),
}

/// A token failure as the retry policy sees it.
fn token_failure(err: &TokenError) -> Failure<'_> {
    match err {
        TokenError::Refused { error, .. } => Failure::Token {
            error,
            retryable: err.is_retryable(),
        },
        // Token requests change nothing at Entra: never ambiguous.
        TokenError::Unreachable { .. } => Failure::Unreachable {
            outcome_unknown: false,
        },
        TokenError::InvalidResponse { .. } | TokenError::Credential { .. } => Failure::Token {
            error: "",
            retryable: err.is_retryable(),
        },
    }
}

/// A Graph failure as the retry policy sees it.
fn graph_failure(err: &GraphError) -> Failure<'_> {
    match err {
        GraphError::Refused { status, code, .. } => Failure::Graph {
            status: *status,
            code,
        },
        GraphError::Unreachable {
            outcome_unknown, ..
        } => Failure::Unreachable {
            outcome_unknown: *outcome_unknown,
        },
    }
}

/// Sends with a cached token; on a first 401 the token is dropped and the send repeated once.
async fn send(
    client: &GraphClient,
    tokens: &TokenProvider,
    sender: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Sent {
    let mut tries = 0;
    loop {
        let token = match tokens.token_for(sender).await {
            Ok(token) => token,
            Err(err) => {
                // Messages stay queued while the credentials are fixed or Entra recovers.
                let reason = err.to_string();
                return Sent::Done(Outcome::failure(token_failure(&err), tries, None, reason));
            }
        };
        match client
            .send_mail(&token, sender, content_type, body.clone())
            .await
        {
            Ok(accepted) => {
                // Info, not debug: JSON sendMail cannot carry the Message-ID, so this line is
                // what links the original Message-ID to Graph's request-id in message trace.
                tracing::info!(
                    request_id = accepted.request_id.as_deref().unwrap_or(""),
                    client_request_id = %accepted.client_request_id,
                    "Graph accepted the message"
                );
                return Sent::Done(Outcome::Delivered);
            }
            Err(err) if err.is_request_too_large() => return Sent::TooLarge(err),
            Err(err) => {
                let outcome = Outcome::failure(
                    graph_failure(&err),
                    tries,
                    err.retry_after(),
                    err.to_string(),
                );
                if matches!(
                    outcome,
                    Outcome::NotDelivered {
                        class: Class::RefreshToken,
                        ..
                    }
                ) {
                    tokens.invalidate_for(sender).await;
                    tries += 1;
                    continue;
                }
                return Sent::Done(outcome);
            }
        }
    }
}
