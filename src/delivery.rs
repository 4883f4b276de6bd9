//! One delivery attempt of one spooled message: load it, convert it, get a token, send it, and
//! say what became of it. The scheduler decides when attempts happen and applies the outcome.

use std::sync::Arc;
use std::time::Duration;

use crate::convert::{self, Converted};
use crate::graph::client::{GraphClient, send_mail_url};
use crate::graph::dry_run::DryRunWriter;
use crate::graph::token::TokenProvider;
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
        let envelope = &meta.envelope;
        let converted = match convert::convert(&raw, &envelope.mail_from, &envelope.rcpt_to) {
            Ok(converted) => converted,
            Err(err) => {
                return Outcome::Failed {
                    reason: format!("cannot convert the message: {err}"),
                };
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
                    Err(err) => Outcome::Retry {
                        reason: format!("dry run: cannot write the request: {err}"),
                        after: None,
                    },
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

/// Sends with a cached token; on a 401 the token is dropped and the send repeated once.
async fn send(
    client: &GraphClient,
    tokens: &TokenProvider,
    sender: &str,
    body: Vec<u8>,
) -> Outcome {
    let mut retried_unauthorized = false;
    loop {
        let token = match tokens.token_for(sender).await {
            Ok(token) => token,
            Err(err) => {
                if !err.is_retryable() {
                    tracing::error!(error = %err, "token request refused; fix the [auth] configuration");
                }
                // Messages stay queued while the credentials are fixed or Entra recovers.
                return Outcome::Retry {
                    reason: err.to_string(),
                    after: None,
                };
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
            Err(err) if err.is_unauthorized() && !retried_unauthorized => {
                tokens.invalidate_for(sender).await;
                retried_unauthorized = true;
            }
            Err(err) if err.is_retryable() => {
                return Outcome::Retry {
                    after: err.retry_after(),
                    reason: err.to_string(),
                };
            }
            Err(err) => {
                return Outcome::Failed {
                    reason: err.to_string(),
                };
            }
        }
    }
}
