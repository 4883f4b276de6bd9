//! The draft path for messages too large for one request (microsoft-graph.md §3, example C):
//! create a draft, post the attachments that did not fit it, stream each large attachment
//! through its own upload session in chunks of at most 4 MiB, read and decoded from the spooled
//! message as they go, then send the draft. Called by [`crate::delivery`] with a
//! [`crate::convert::UploadPlan`]; needs `Mail.ReadWrite` besides `Mail.Send`.

use std::fs::File;
use std::path::{Path, PathBuf};

use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use super::client::{Accepted, GraphClient, GraphError, refusal};
use super::model::{FileAttachment, Message};
use super::token::{AccessToken, error_chain};
use crate::convert::{Content, LargeAttachment, PartSource, UploadPlan};

/// Largest chunk per PUT: Graph's per-request limit.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
struct Created {
    id: String,
}

/// `uploadSession` (and the shorter answer to an intermediate PUT, whose expiry Graph spells
/// `ExpirationDateTime`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadSession {
    #[serde(default)]
    upload_url: Option<String>,
    #[serde(default)]
    next_expected_ranges: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentItem<'a> {
    attachment_type: &'static str,
    name: &'a str,
    size: u64,
    content_type: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_inline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_id: Option<&'a str>,
}

/// The start offset of the first of `nextExpectedRanges` (`"4194304"` or `"4194304-"`).
fn next_offset(ranges: &[String]) -> Option<u64> {
    let first = ranges.first()?;
    first.split('-').next()?.trim().parse().ok()
}

fn unreachable(err: &reqwest::Error) -> GraphError {
    GraphError::Unreachable {
        reason: error_chain(err),
        // Only a failed connect proves Graph never saw the request.
        outcome_unknown: !err.is_connect(),
    }
}

impl GraphClient {
    /// `{endpoint}/users/{sender}/messages[/{draft}[/{tail...}]]`.
    fn messages_url(&self, sender: &str, tail: &[&str]) -> url::Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["users", sender, "messages"])
                .extend(tail);
        }
        url
    }

    async fn post_json(
        &self,
        token: &AccessToken,
        url: url::Url,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, GraphError> {
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, format!("Bearer {}", token.secret()))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(refusal(response).await)
        }
    }

    /// Creates the draft and returns its id.
    ///
    /// # Errors
    /// Graph refused (e.g. 403 without Mail.ReadWrite) or could not be reached.
    pub async fn create_draft(
        &self,
        token: &AccessToken,
        sender: &str,
        draft: &Message,
    ) -> Result<String, GraphError> {
        let body = serde_json::to_vec(draft).expect("message always serialises");
        let response = self
            .post_json(token, self.messages_url(sender, &[]), body)
            .await?;
        let created: Created = response.json().await.map_err(|e| unreachable(&e))?;
        Ok(created.id)
    }

    /// Adds one small attachment to the draft.
    ///
    /// # Errors
    /// Graph refused or could not be reached.
    pub async fn add_attachment(
        &self,
        token: &AccessToken,
        sender: &str,
        draft_id: &str,
        attachment: &FileAttachment,
    ) -> Result<(), GraphError> {
        let body = serde_json::to_vec(attachment).expect("attachment always serialises");
        let url = self.messages_url(sender, &[draft_id, "attachments"]);
        self.post_json(token, url, body).await.map(drop)
    }

    /// Uploads one large attachment through an upload session: chunks of at most 4 MiB, read
    /// from `message` (the spooled message file) from where `nextExpectedRanges` says, without
    /// the Authorization header (the URL carries its own token). A session that expired or
    /// vanished is replaced once by a new one.
    ///
    /// # Errors
    /// Graph refused or could not be reached, or the content could not be read.
    pub async fn upload_attachment(
        &self,
        token: &AccessToken,
        sender: &str,
        draft_id: &str,
        attachment: &LargeAttachment,
        message: &Path,
    ) -> Result<(), UploadFailure> {
        let mut chunks = Chunks::new(message, attachment);
        let mut renewed = false;
        loop {
            let upload_url = self
                .create_upload_session(token, sender, draft_id, attachment)
                .await
                .map_err(UploadFailure::Graph)?;
            match self.put_chunks(&upload_url, &mut chunks).await {
                Err(UploadFailure::Graph(GraphError::Refused { status: 404, .. })) if !renewed => {
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    async fn create_upload_session(
        &self,
        token: &AccessToken,
        sender: &str,
        draft_id: &str,
        attachment: &LargeAttachment,
    ) -> Result<String, GraphError> {
        let item = AttachmentItem {
            attachment_type: "file",
            name: &attachment.name,
            size: attachment.size,
            content_type: &attachment.content_type,
            is_inline: attachment.is_inline,
            content_id: attachment.content_id.as_deref(),
        };
        let body = serde_json::to_vec(&serde_json::json!({ "AttachmentItem": item }))
            .expect("item always serialises");
        let url = self.messages_url(sender, &[draft_id, "attachments", "createUploadSession"]);
        let response = self.post_json(token, url, body).await?;
        let session: UploadSession = response.json().await.map_err(|e| unreachable(&e))?;
        session.upload_url.ok_or_else(|| GraphError::Refused {
            status: 502,
            code: "(no uploadUrl)".into(),
            message: "createUploadSession answered without an uploadUrl".into(),
            request_id: None,
            retry_after: None,
        })
    }

    /// PUTs the content to `upload_url` in order; each answer says where to continue.
    async fn put_chunks(&self, upload_url: &str, chunks: &mut Chunks) -> Result<(), UploadFailure> {
        let total = chunks.total;
        let mut offset = 0;
        while offset < total {
            let chunk = chunks.read_at(offset).await?;
            let end = offset + chunk.len() as u64;
            let response = self
                .http
                .put(upload_url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("bytes {offset}-{}/{total}", end - 1))
                .body(chunk)
                .send()
                .await
                .map_err(|e| UploadFailure::Graph(unreachable(&e)))?;
            match response.status().as_u16() {
                201 => return Ok(()),
                200 => {
                    let session: UploadSession = response
                        .json()
                        .await
                        .map_err(|e| UploadFailure::Graph(unreachable(&e)))?;
                    // Resume where Graph says, which is `end` unless a chunk went missing.
                    offset = next_offset(&session.next_expected_ranges).unwrap_or(end);
                }
                _ => return Err(UploadFailure::Graph(refusal(response).await)),
            }
        }
        Ok(())
    }

    /// Sends the draft (`202`).
    ///
    /// # Errors
    /// Graph refused (e.g. ErrorMessageSizeExceeded) or could not be reached.
    pub async fn send_draft(
        &self,
        token: &AccessToken,
        sender: &str,
        draft_id: &str,
    ) -> Result<Accepted, GraphError> {
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let response = self
            .http
            .post(self.messages_url(sender, &[draft_id, "send"]))
            .header(AUTHORIZATION, format!("Bearer {}", token.secret()))
            .header("client-request-id", &client_request_id)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if response.status().as_u16() == 202 {
            let request_id = response
                .headers()
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(Accepted {
                request_id,
                client_request_id,
            });
        }
        Err(refusal(response).await)
    }

    /// Deletes a draft; one that is already gone counts as deleted.
    ///
    /// # Errors
    /// Graph refused or could not be reached.
    pub async fn delete_draft(
        &self,
        token: &AccessToken,
        sender: &str,
        draft_id: &str,
    ) -> Result<(), GraphError> {
        let response = self
            .http
            .delete(self.messages_url(sender, &[draft_id]))
            .header(AUTHORIZATION, format!("Bearer {}", token.secret()))
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(refusal(response).await),
        }
    }
}

/// Why the draft path did not deliver.
#[derive(Debug)]
pub enum UploadFailure {
    /// Graph refused or could not be reached at some step.
    Graph(GraphError),
    /// The draft id could not be written to the spool; nothing was uploaded.
    Persist(String),
    /// The spooled message could not be read.
    Spool(String),
    /// An attachment read from the spool does not decode to the size the parse found, so it
    /// can never be uploaded as announced.
    Content(String),
}

/// One large attachment's content, read from the spooled message a chunk at a time (on the
/// blocking pool: it is file I/O and decoding).
struct Chunks {
    message: PathBuf,
    name: String,
    source: PartSource,
    total: u64,
    /// The open content and how many decoded bytes it has handed out.
    open: Option<(Content<File>, u64)>,
}

impl Chunks {
    fn new(message: &Path, attachment: &LargeAttachment) -> Self {
        Self {
            message: message.to_path_buf(),
            name: attachment.name.clone(),
            source: attachment.source,
            total: attachment.size,
            open: None,
        }
    }

    /// The chunk of at most [`MAX_CHUNK`] bytes at `offset`, exactly as long as the announced
    /// size says.
    async fn read_at(&mut self, offset: u64) -> Result<Vec<u8>, UploadFailure> {
        let (total, len) = (self.total, (self.total - offset).min(MAX_CHUNK as u64));
        let (message, source, name) = (self.message.clone(), self.source, self.name.clone());
        let mut open = self.open.take();
        let (open, chunk) = tokio::task::spawn_blocking(move || {
            let failed = |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                    UploadFailure::Content(format!("attachment {name:?}: {e}"))
                }
                _ => UploadFailure::Spool(format!("{}: {e}", message.display())),
            };
            let chunk = (|| {
                let (mut content, position) = match open.take() {
                    Some((content, position)) if position <= offset => (content, position),
                    // Graph asked for bytes already sent (or nothing is open): from the start.
                    _ => {
                        let file = File::open(&message).map_err(failed)?;
                        (Content::open(file, &source).map_err(failed)?, 0)
                    }
                };
                content.skip(offset - position).map_err(failed)?;
                let chunk = content.next_chunk(len as usize).map_err(failed)?;
                let end = offset + chunk.len() as u64;
                let longer = end == total && !content.next_chunk(1).map_err(failed)?.is_empty();
                if chunk.len() as u64 != len || longer {
                    return Err(UploadFailure::Content(format!(
                        "attachment {name:?} read from the spool does not decode to the {total} \
                         bytes the parse found, so it cannot be uploaded as announced"
                    )));
                }
                open = Some((content, end));
                Ok(chunk)
            })();
            (open, chunk)
        })
        .await
        .map_err(|e| UploadFailure::Spool(e.to_string()))?;
        self.open = open;
        chunk
    }
}

/// The whole draft path for one message, whose raw bytes are in the file `message` (the large
/// attachments are read from it as they are uploaded). `orphan` is a draft id left by an earlier attempt
/// (deleted first, so a crash never leads to two drafts or a half-sent one); `persist` records
/// the new draft id before anything is uploaded. On failure the new draft is deleted (best
/// effort; a draft that survives is found through the spool's draft id next time), except
/// when Graph throttled the mailbox: then the next attempt, after the pause, deletes it.
///
/// # Errors
/// [`UploadFailure`]; [`GraphError::is_retryable`] tells whether a retry can help.
pub async fn send_by_upload(
    client: &GraphClient,
    token: &AccessToken,
    plan: &UploadPlan,
    message: &Path,
    orphan: Option<&str>,
    persist: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Accepted, UploadFailure> {
    let sender = plan.sender.as_str();
    if let Some(orphan) = orphan {
        client
            .delete_draft(token, sender, orphan)
            .await
            .map_err(UploadFailure::Graph)?;
    }
    let draft_id = client
        .create_draft(token, sender, &plan.draft)
        .await
        .map_err(UploadFailure::Graph)?;
    let persisted = persist(&draft_id);
    let result = match &persisted {
        Err(err) => Err(UploadFailure::Persist(err.clone())),
        Ok(()) => fill_and_send(client, token, plan, message, &draft_id).await,
    };
    // A throttled mailbox is not called again before its Retry-After: the draft, whose id is
    // in the spool, is deleted first thing at the next attempt instead.
    let throttled = matches!(&result, Err(UploadFailure::Graph(err)) if err.is_throttled());
    if result.is_err()
        && !(throttled && persisted.is_ok())
        && let Err(err) = client.delete_draft(token, sender, &draft_id).await
    {
        tracing::warn!(draft_id, error = %err, "could not delete the unsent draft");
    }
    result
}

async fn fill_and_send(
    client: &GraphClient,
    token: &AccessToken,
    plan: &UploadPlan,
    message: &Path,
    draft_id: &str,
) -> Result<Accepted, UploadFailure> {
    let sender = plan.sender.as_str();
    for attachment in &plan.separate {
        client
            .add_attachment(token, sender, draft_id, attachment)
            .await
            .map_err(UploadFailure::Graph)?;
    }
    for attachment in &plan.large {
        client
            .upload_attachment(token, sender, draft_id, attachment, message)
            .await?;
    }
    client
        .send_draft(token, sender, draft_id)
        .await
        .map_err(UploadFailure::Graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_expected_ranges() {
        let ranges = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(next_offset(&ranges(&["0-"])), Some(0));
        assert_eq!(next_offset(&ranges(&["4194304"])), Some(4_194_304));
        assert_eq!(
            next_offset(&ranges(&["8388608-10485759", "x"])),
            Some(8_388_608)
        );
        assert_eq!(next_offset(&ranges(&[])), None);
    }
}
