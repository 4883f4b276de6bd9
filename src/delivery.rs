//! One delivery attempt of one spooled message: load it, convert it, get a token, send it, and
//! say what became of it. The scheduler decides when attempts happen and applies the outcome.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::config::{LargeMessages, MAX_REQUEST_BYTES};
use crate::convert::{self, Converted};
use crate::graph::client::{GraphClient, send_mail_url};
use crate::graph::dry_run::DryRunWriter;
use crate::graph::token::TokenProvider;
use crate::graph::upload::{self, UploadFailure};
use crate::queue::{EntryMeta, Spool};

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Graph answered `202` (or, in dry-run, the request was written).
    Delivered,
    /// Not delivered now; try again later (no sooner than `after`, when Graph said so).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Will never be delivered as it is: goes to `failed/` with the reason.
    Failed { reason: String },
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
    /// ([`crate::graph::upload`]), with the draft id kept in the spool metadata meanwhile.
    async fn upload(
        &self,
        client: &GraphClient,
        tokens: &TokenProvider,
        meta: &EntryMeta,
        raw: &[u8],
    ) -> Outcome {
        let envelope = &meta.envelope;
        let plan = match convert::plan_upload(
            raw,
            &envelope.mail_from,
            &envelope.rcpt_to,
            &self.fidelity.options,
        ) {
            Ok(plan) => plan,
            Err(err) => {
                return Outcome::Failed {
                    reason: format!("cannot convert the message: {err}"),
                };
            }
        };
        let token = match tokens.token().await {
            Ok(token) => token,
            Err(err) => {
                return Outcome::Retry {
                    reason: err.to_string(),
                    after: None,
                };
            }
        };
        let persist = |draft_id: &str| {
            let mut updated = meta.clone();
            updated.draft_id = Some(draft_id.to_owned());
            self.spool.update(&updated).map_err(|e| e.to_string())
        };
        let orphan = meta.draft_id.as_deref();
        match upload::send_by_upload(client, &token, &plan, orphan, persist).await {
            Ok(accepted) => {
                tracing::info!(
                    request_id = accepted.request_id.as_deref().unwrap_or(""),
                    attachments_uploaded = plan.large.len(),
                    "Graph accepted the message (draft and upload sessions)"
                );
                Outcome::Delivered
            }
            Err(UploadFailure::Persist(reason)) => Outcome::Retry {
                reason: format!("cannot record the draft id in the spool: {reason}"),
                after: None,
            },
            Err(UploadFailure::Graph(err)) if err.is_unauthorized() => {
                tokens.invalidate().await;
                Outcome::Retry {
                    reason: err.to_string(),
                    after: None,
                }
            }
            Err(UploadFailure::Graph(err)) if err.is_retryable() => Outcome::Retry {
                after: err.retry_after(),
                reason: err.to_string(),
            },
            Err(UploadFailure::Graph(err)) => Outcome::Failed {
                reason: err.to_string(),
            },
        }
    }

    /// Converts with `fidelity` instead of the defaults.
    pub fn with_fidelity(mut self, fidelity: Fidelity) -> Self {
        self.fidelity = fidelity;
        self
    }

    pub async fn attempt(&self, meta: &EntryMeta) -> Outcome {
        let spool = self.spool.clone();
        let id = meta.id;
        let raw = match tokio::task::spawn_blocking(move || spool.read_body(id)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(err)) => {
                return Outcome::Retry {
                    reason: err.to_string(),
                    after: None,
                };
            }
            Err(join) => {
                return Outcome::Retry {
                    reason: join.to_string(),
                    after: None,
                };
            }
        };
        // A raw message above 4 MiB cannot become a smaller request: skip building it.
        if let Outbound::Graph { client, tokens } = &self.outbound
            && self.upload_enabled()
            && raw.len() as u64 > MAX_REQUEST_BYTES
        {
            let span = tracing::info_span!("upload", queue_id = %id);
            return self
                .upload(client, tokens, meta, &raw)
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
            &self.fidelity.options,
        ) {
            Ok(converted) => converted,
            Err(err) => {
                return Outcome::Failed {
                    reason: format!("cannot convert the message: {err}"),
                };
            }
        };
        if let Some(why) = converted.forced_mime {
            tracing::info!(queue_id = %id, reason = why, "sent in MIME format");
        }
        let (content_type, body) = converted.http_body();
        // Re-checked after conversion: the DATA limit keeps most messages below this.
        if body.len() as u64 > MAX_REQUEST_BYTES && !self.upload_enabled() {
            return Outcome::Failed {
                reason: format!(
                    "the Graph request would be {} bytes, above Graph's 4 MiB request limit; \
                     set graph.large_messages = \"upload\" to send large messages",
                    body.len()
                ),
            };
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
                    Err(err) => Outcome::Retry {
                        reason: format!("dry run: cannot write the request: {err}"),
                        after: None,
                    },
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
                        Sent::TooLarge(err) => Some(Outcome::Failed {
                            reason: err.to_string(),
                        }),
                    }
                };
                let outcome = match sent {
                    Some(outcome) => outcome,
                    None => {
                        self.upload(client, tokens, meta, &raw)
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

/// What [`send`] leaves to its caller: an outcome, or Graph's refusal of the request's size.
enum Sent {
    Done(Outcome),
    TooLarge(crate::graph::client::GraphError),
}

/// Sends with a cached token; on a 401 the token is dropped and the send repeated once.
async fn send(
    client: &GraphClient,
    tokens: &TokenProvider,
    sender: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Sent {
    let mut retried_unauthorized = false;
    loop {
        let token = match tokens.token().await {
            Ok(token) => token,
            Err(err) => {
                if !err.is_retryable() {
                    tracing::error!(error = %err, "token request refused; fix the [auth] configuration");
                }
                // Messages stay queued while the credentials are fixed or Entra recovers.
                return Sent::Done(Outcome::Retry {
                    reason: err.to_string(),
                    after: None,
                });
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
            Err(err) if err.is_unauthorized() && !retried_unauthorized => {
                tokens.invalidate().await;
                retried_unauthorized = true;
            }
            Err(err) if err.is_request_too_large() => return Sent::TooLarge(err),
            Err(err) if err.is_retryable() => {
                return Sent::Done(Outcome::Retry {
                    after: err.retry_after(),
                    reason: err.to_string(),
                });
            }
            Err(err) => {
                return Sent::Done(Outcome::Failed {
                    reason: err.to_string(),
                });
            }
        }
    }
}
