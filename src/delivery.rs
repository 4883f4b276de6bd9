//! One delivery attempt of one spooled message: load it, convert it, get a token, send it, and
//! say what became of it. The scheduler decides when attempts happen and applies the outcome.

use std::sync::Arc;
use std::time::Duration;

use crate::convert::{self, Converted};
use crate::graph::client::GraphError;
use crate::graph::client::{GraphClient, send_mail_url};
use crate::graph::dry_run::DryRunWriter;
use crate::graph::token::{DEFAULT_PROFILE, TokenError, TokenProvider};
use crate::queue::retry::{Class, Failure, classify};
use crate::queue::scheduler::{Attempt, Lane};
use crate::queue::{EntryMeta, Spool};

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
}

impl Delivery {
    pub fn new(spool: Arc<Spool>, outbound: Outbound, endpoint: url::Url) -> Self {
        Self {
            spool,
            outbound,
            endpoint,
        }
    }

    pub async fn attempt(&self, meta: &EntryMeta) -> Outcome {
        let spool = self.spool.clone();
        let id = meta.id;
        let raw = match tokio::task::spawn_blocking(move || spool.read_body(id)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(err)) => return Outcome::failure(Failure::Local, 0, None, err.to_string()),
            Err(join) => return Outcome::failure(Failure::Local, 0, None, join.to_string()),
        };
        let envelope = &meta.envelope;
        let converted = match convert::convert(&raw, &envelope.mail_from, &envelope.rcpt_to) {
            Ok(converted) => converted,
            Err(err) => {
                let reason = format!("cannot convert the message: {err}");
                return Outcome::failure(Failure::Conversion, 0, None, reason);
            }
        };
        let Converted {
            sender,
            request,
            message_id,
        } = converted;
        let body = serde_json::to_vec(&request).expect("sendMail request always serialises");
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
                let outcome = send(client, tokens, &sender, body).await;
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
        let spool = self.spool.clone();
        let meta = meta.clone();
        // The mailbox is the converted sender (the From address); a message that cannot be
        // converted fails at its attempt, so it may wait in its envelope sender's lane.
        let sender = tokio::task::spawn_blocking(move || {
            spool
                .read_body(meta.id)
                .ok()
                .and_then(|raw| {
                    convert::convert(&raw, &meta.envelope.mail_from, &meta.envelope.rcpt_to).ok()
                })
                .map_or(meta.envelope.mail_from, |converted| converted.sender)
        })
        .await
        .unwrap_or_default();
        let profile = match &self.outbound {
            Outbound::Graph { tokens, .. } => tokens.profile_for(&sender),
            Outbound::DryRun(_) => DEFAULT_PROFILE.to_string(),
        };
        Lane::new(&profile, &sender)
    }

    async fn attempt(&self, meta: &EntryMeta) -> Outcome {
        Delivery::attempt(self, meta).await
    }
}

/// Sends with a cached token; on a first 401 the token is dropped and the send repeated once.
async fn send(
    client: &GraphClient,
    tokens: &TokenProvider,
    sender: &str,
    body: Vec<u8>,
) -> Outcome {
    let mut tries = 0;
    loop {
        let token = match tokens.token_for(sender).await {
            Ok(token) => token,
            Err(err) => {
                let failure = match &err {
                    TokenError::Refused { error, .. } => Failure::Token {
                        error,
                        retryable: err.is_retryable(),
                    },
                    // Token requests change nothing at Entra: never ambiguous.
                    TokenError::Unreachable { .. } => Failure::Unreachable {
                        outcome_unknown: false,
                    },
                    TokenError::InvalidResponse { .. } | TokenError::Credential { .. } => {
                        Failure::Token {
                            error: "",
                            retryable: err.is_retryable(),
                        }
                    }
                };
                // Messages stay queued while the credentials are fixed or Entra recovers.
                return Outcome::failure(failure, tries, None, err.to_string());
            }
        };
        match client.send_mail(&token, sender, body.clone()).await {
            Ok(accepted) => {
                tracing::debug!(
                    request_id = accepted.request_id.as_deref().unwrap_or(""),
                    client_request_id = %accepted.client_request_id,
                    "Graph accepted the message"
                );
                return Outcome::Delivered;
            }
            Err(err) => {
                let failure = match &err {
                    GraphError::Refused { status, code, .. } => Failure::Graph {
                        status: *status,
                        code,
                    },
                    GraphError::Unreachable {
                        outcome_unknown, ..
                    } => Failure::Unreachable {
                        outcome_unknown: *outcome_unknown,
                    },
                };
                let outcome = Outcome::failure(failure, tries, err.retry_after(), err.to_string());
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
                return outcome;
            }
        }
    }
}
