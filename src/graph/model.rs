//! Serde types for the Graph `sendMail` request body (`POST /users/{id}/sendMail`).
//!
//! Built by [`crate::convert`] and serialised by the Graph client. Field names follow Graph's
//! camelCase spelling exactly, because Graph rejects or silently ignores misspelt properties;
//! empty collections and `None` fields are left out so the JSON stays minimal.

use serde::Serialize;

/// The whole request body: `{"message": {...}, "saveToSentItems": ...}`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SendMailRequest {
    pub message: Message,
    /// Graph defaults to `true` when absent; sent as a JSON boolean, not the string the docs show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_to_sent_items: Option<bool>,
}

/// The subset of Graph's `message` resource that the relay sets.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub subject: String,
    pub body: ItemBody,
    /// Must be the sending mailbox (or one it has Send As rights for); `None` lets Graph use
    /// the mailbox itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Recipient>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_recipients: Vec<Recipient>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cc_recipients: Vec<Recipient>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bcc_recipients: Vec<Recipient>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Recipient>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub importance: Option<Importance>,
    /// Set only when the sender asked (`Return-Receipt-To`), so Graph's default stays otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_delivery_receipt_requested: bool,
    /// Set only when the sender asked (`Disposition-Notification-To`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_read_receipt_requested: bool,
    /// Custom `X-` headers; Graph takes at most five and only `x-` names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub internet_message_headers: Vec<InternetMessageHeader>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<FileAttachment>,
}

/// `importance`; Graph compares case-insensitively and its samples use capitals.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    Low,
    Normal,
    High,
}

/// `internetMessageHeader`: one custom header, set at creation only.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct InternetMessageHeader {
    pub name: String,
    pub value: String,
}

/// `itemBody`: the message body and whether it is HTML.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    pub content_type: BodyType,
    pub content: String,
}

/// `bodyType`, spelt as the Graph samples spell it (Graph itself compares case-insensitively).
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    #[serde(rename = "Text")]
    Text,
    #[serde(rename = "HTML")]
    Html,
}

/// `recipient`: one object per address; Graph refuses `;`-joined address strings.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub email_address: EmailAddress,
}

/// `emailAddress`: an address with an optional display name.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EmailAddress {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
}

/// `#microsoft.graph.fileAttachment`, sent inline in the request (small-attachment path).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileAttachment {
    /// Always [`FileAttachment::ODATA_TYPE`]; Graph requires it to pick the attachment kind.
    #[serde(rename = "@odata.type")]
    pub odata_type: &'static str,
    pub name: String,
    pub content_type: String,
    /// Standard (padded, unwrapped) base64 of the decoded attachment bytes.
    pub content_bytes: String,
    /// The part's Content-ID without angle brackets, which `cid:` URLs in the body refer to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// An inline part (an image the HTML body shows), not a file the reader opens.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_inline: bool,
}

impl FileAttachment {
    pub const ODATA_TYPE: &'static str = "#microsoft.graph.fileAttachment";

    /// A file attachment with the `@odata.type` Graph requires already filled in.
    pub fn new(name: String, content_type: String, content_bytes: String) -> Self {
        Self {
            odata_type: Self::ODATA_TYPE,
            name,
            content_type,
            content_bytes,
            content_id: None,
            is_inline: false,
        }
    }
}

impl Recipient {
    pub fn new(name: Option<String>, address: String) -> Self {
        Self {
            email_address: EmailAddress { name, address },
        }
    }
}
