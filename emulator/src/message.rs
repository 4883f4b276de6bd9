//! Validation of sendMail payloads as strictly as Graph does it: the JSON `message` resource
//! (property names, types, recipients, headers, attachments) and base64 MIME with header recipients.

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::state::Fault;

/// Graph's documented recipient cap: To + Cc + Bcc (§2).
const MAX_RECIPIENTS: usize = 500;
/// Observed cap on custom `internetMessageHeaders` (§2).
const MAX_HEADERS: usize = 5;

/// A Graph error answer: status, `error.code`, `error.message`.
#[derive(Debug)]
pub struct GraphError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after: Option<String>,
}

impl GraphError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The answer for an injected fault, with Microsoft's code and text for its status.
    pub fn fault(fault: Fault) -> Self {
        let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let (code, message) = match status {
            StatusCode::TOO_MANY_REQUESTS => ("TooManyRequests", "Please retry again later."),
            StatusCode::SERVICE_UNAVAILABLE => (
                "serviceNotAvailable",
                "The service is temporarily unavailable. Please retry later.",
            ),
            StatusCode::GATEWAY_TIMEOUT => ("gatewayTimeout", "The gateway timed out."),
            _ => ("generalException", "An unspecified error has occurred."),
        };
        Self {
            status,
            code: fault.code.unwrap_or_else(|| code.to_owned()),
            message: message.to_owned(),
            retry_after: fault.retry_after,
        }
    }
}

fn bad(code: &str, message: impl Into<String>) -> GraphError {
    GraphError::new(StatusCode::BAD_REQUEST, code, message)
}

/// OData deserialization failures all use `RequestBodyRead`; the texts are OData's.
fn body_read(message: impl Into<String>) -> GraphError {
    bad("RequestBodyRead", message)
}

fn unknown_property(name: &str, ty: &str) -> GraphError {
    body_read(format!(
        "The property '{name}' does not exist on type '{ty}'. Make sure to only use property names that are defined by the type or mark the type as open type."
    ))
}

fn node_kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "StartArray",
        Value::Object(_) => "StartObject",
        _ => "PrimitiveValue",
    }
}

fn not_found_recipient(address: &str) -> GraphError {
    bad(
        "ErrorInvalidRecipients",
        format!(
            "At least one recipient isn't valid., Recipient '{address}' isn't resolved. All recipients must be resolved before a message can be submitted."
        ),
    )
}

/// What a valid payload yields.
pub struct CheckedJson {
    pub body: Value,
    /// `message.from` address, for the Send As check.
    pub from: Option<String>,
}

/// What a valid MIME payload yields.
pub struct CheckedMime {
    pub mime: Vec<u8>,
    /// First `From:` address, for the Send As check.
    pub from: Option<String>,
}

/// An object of OData type `ty` whose properties are all in `allowed`.
fn object<'a>(
    v: &'a Value,
    ty: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, GraphError> {
    let Value::Object(map) = v else {
        return Err(body_read(format!(
            "A node of type '{}' was read from the JSON reader when trying to read a resource of type '{ty}'; however, a 'StartObject' node was expected.",
            node_kind(v)
        )));
    };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(unknown_property(k, ty)),
        None => Ok(map),
    }
}

/// Non-null properties only: OData treats `null` as "not set".
fn present(map: &Map<String, Value>) -> impl Iterator<Item = (&str, &Value)> {
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.as_str(), v))
}

fn array<'a>(v: &'a Value, property: &str) -> Result<&'a Vec<Value>, GraphError> {
    v.as_array().ok_or_else(|| {
        body_read(format!(
            "A node of type '{}' was read from the JSON reader when trying to read the contents of the property '{property}'; however, a 'StartArray' node was expected.",
            node_kind(v)
        ))
    })
}

fn literal_error(v: &Value, edm: &str) -> GraphError {
    let literal = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    body_read(format!(
        "Cannot convert the literal '{literal}' to the expected type '{edm}'."
    ))
}

fn string(v: &Value) -> Result<&str, GraphError> {
    v.as_str().ok_or_else(|| literal_error(v, "Edm.String"))
}

fn boolean(v: &Value) -> Result<(), GraphError> {
    if v.is_boolean() {
        Ok(())
    } else {
        Err(literal_error(v, "Edm.Boolean"))
    }
}

/// Enum members compare case-insensitively (samples send `"HTML"`, `"Low"`); the error text is
/// .NET's enum-parse message as Graph relays it (UNCONFIRMED).
fn enumeration(v: &Value, members: &[&str]) -> Result<(), GraphError> {
    let s = string(v)?;
    if members.iter().any(|m| m.eq_ignore_ascii_case(s)) {
        Ok(())
    } else {
        Err(body_read(format!("Requested value '{s}' was not found.")))
    }
}

/// One address, plausibly deliverable: `local@domain.tld`, no list separators or spaces.
fn plausible_address(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !address
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, ';' | ',' | '<' | '>'))
}

/// A `recipient` object; returns its address (checked by the caller after the whole walk).
fn recipient(v: &Value) -> Result<String, GraphError> {
    let map = object(v, "microsoft.graph.recipient", &["emailAddress"])?;
    let Some(email) = map.get("emailAddress").filter(|v| !v.is_null()) else {
        return Ok(String::new());
    };
    let email = object(email, "microsoft.graph.emailAddress", &["address", "name"])?;
    let mut address = String::new();
    for (key, value) in present(email) {
        let s = string(value)?;
        if key == "address" {
            address = s.to_owned();
        }
    }
    Ok(address)
}

const MESSAGE_PROPERTIES: &[&str] = &[
    "subject",
    "body",
    "from",
    "sender",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "importance",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "internetMessageId",
    "internetMessageHeaders",
    "attachments",
    "singleValueExtendedProperties",
    "multiValueExtendedProperties",
    "flag",
    "categories",
];

const FILE_ATTACHMENT_PROPERTIES: &[&str] = &[
    "@odata.type",
    "name",
    "contentType",
    "contentBytes",
    "contentId",
    "contentLocation",
    "isInline",
    "size",
    "lastModifiedDateTime",
];

/// Validates a JSON sendMail body: `{"message": {...}, "saveToSentItems": bool}`.
pub fn check_json(raw: &[u8]) -> Result<CheckedJson, GraphError> {
    // Texts for empty and malformed payloads are Graph's usual ones, not from the doc (UNCONFIRMED).
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("BadRequest", "Empty Payload. JSON content expected."));
    }
    let body: Value = serde_json::from_slice(raw).map_err(|_| {
        bad(
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )
    })?;
    let Value::Object(top) = &body else {
        return Err(body_read("The request payload must be a JSON object."));
    };
    let mut message = None;
    for (key, value) in top {
        match key.as_str() {
            "message" => message = Some(value),
            // The doc's sample sends the string "false"; accepting strings too is UNCONFIRMED.
            "saveToSentItems" => match value {
                Value::Bool(_) | Value::Null => {}
                Value::String(s)
                    if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {}
                other => return Err(literal_error(other, "Edm.Boolean")),
            },
            // An action parameter that sendMail does not declare; OData's text.
            other => {
                return Err(body_read(format!(
                    "The parameter '{other}' in the request payload is not a valid parameter for the operation 'sendMail'."
                )));
            }
        }
    }
    let Some(message) = message.filter(|m| !m.is_null()) else {
        // Code and text for a missing message are UNCONFIRMED.
        return Err(bad(
            "ErrorInvalidParameter",
            "The value of the parameter 'Message' is empty.",
        ));
    };
    let from = check_message(message)?;
    Ok(CheckedJson { body, from })
}

/// Walks the message: first every type error (as OData deserialization would), then the
/// business rules (headers, recipients) in Exchange's order.
fn check_message(message: &Value) -> Result<Option<String>, GraphError> {
    let map = object(message, "microsoft.graph.message", MESSAGE_PROPERTIES)?;
    let mut counted = Vec::new();
    let mut other_addresses = Vec::new();
    let mut from = None;
    let mut headers = Vec::new();
    for (key, value) in present(map) {
        match key {
            "subject" | "internetMessageId" => {
                string(value)?;
            }
            "isDeliveryReceiptRequested" | "isReadReceiptRequested" | "isRead" => boolean(value)?,
            "importance" => enumeration(value, &["low", "normal", "high"])?,
            "body" => {
                let body = object(
                    value,
                    "microsoft.graph.itemBody",
                    &["contentType", "content"],
                )?;
                for (k, v) in present(body) {
                    if k == "contentType" {
                        enumeration(v, &["text", "html"])?;
                    } else {
                        string(v)?;
                    }
                }
            }
            "from" | "sender" => {
                let address = recipient(value)?;
                if key == "from" {
                    from = Some(address.clone());
                }
                other_addresses.push(address);
            }
            "toRecipients" | "ccRecipients" | "bccRecipients" | "replyTo" => {
                let target = if key == "replyTo" {
                    &mut other_addresses
                } else {
                    &mut counted
                };
                for r in array(value, key)? {
                    target.push(recipient(r)?);
                }
            }
            "internetMessageHeaders" => {
                for h in array(value, key)? {
                    let h = object(
                        h,
                        "microsoft.graph.internetMessageHeader",
                        &["name", "value"],
                    )?;
                    let mut name = String::new();
                    for (k, v) in present(h) {
                        let s = string(v)?;
                        if k == "name" {
                            name = s.to_owned();
                        }
                    }
                    headers.push(name);
                }
            }
            "attachments" => {
                for a in array(value, key)? {
                    check_attachment(a)?;
                }
            }
            "singleValueExtendedProperties" => {
                for p in array(value, key)? {
                    let p = object(
                        p,
                        "microsoft.graph.singleValueLegacyExtendedProperty",
                        &["id", "value"],
                    )?;
                    for (_, v) in present(p) {
                        string(v)?;
                    }
                }
            }
            "multiValueExtendedProperties" => {
                for p in array(value, key)? {
                    let p = object(
                        p,
                        "microsoft.graph.multiValueLegacyExtendedProperty",
                        &["id", "value"],
                    )?;
                    if let Some(id) = p.get("id") {
                        string(id)?;
                    }
                    if let Some(values) = p.get("value").filter(|v| !v.is_null()) {
                        for v in array(values, "value")? {
                            string(v)?;
                        }
                    }
                }
            }
            "flag" => {
                object(
                    value,
                    "microsoft.graph.followupFlag",
                    &[
                        "flagStatus",
                        "startDateTime",
                        "dueDateTime",
                        "completedDateTime",
                    ],
                )?;
            }
            // Only `categories` is left in MESSAGE_PROPERTIES.
            _ => {
                for c in array(value, key)? {
                    string(c)?;
                }
            }
        }
    }

    if headers.len() > MAX_HEADERS {
        return Err(bad(
            "InvalidInternetMessageHeaderCollection",
            "Maximum number of headers in one message should be less than or equal to 5.",
        ));
    }
    if let Some(name) = headers
        .iter()
        .find(|n| !(n.starts_with("x-") || n.starts_with("X-")))
    {
        return Err(bad(
            "InvalidInternetMessageHeader",
            format!("The internet message header name '{name}' should start with 'x-' or 'X-'."),
        ));
    }
    check_recipients(&counted, &other_addresses)?;
    Ok(from)
}

/// Every address plausible, at least one and at most 500 To/Cc/Bcc recipients.
fn check_recipients(counted: &[String], others: &[String]) -> Result<(), GraphError> {
    if let Some(bad_address) = counted.iter().chain(others).find(|a| !plausible_address(a)) {
        return Err(not_found_recipient(bad_address));
    }
    if counted.is_empty() {
        return Err(bad(
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
        ));
    }
    if counted.len() > MAX_RECIPIENTS {
        // The code Graph uses for this is UNCONFIRMED; ErrorInvalidRecipients keeps it a
        // permanent recipient error for the relay's classification.
        return Err(bad(
            "ErrorInvalidRecipients",
            format!(
                "The message has {} recipients; at most {MAX_RECIPIENTS} (To, Cc and Bcc together) are allowed.",
                counted.len()
            ),
        ));
    }
    Ok(())
}

/// Only file attachments are emulated. Missing required properties get `ErrorInvalidRequest`
/// (Exchange's generic code; Graph's exact answer is UNCONFIRMED), type errors `RequestBodyRead`.
fn check_attachment(v: &Value) -> Result<(), GraphError> {
    let Value::Object(map) = v else {
        return Err(body_read(format!(
            "A node of type '{}' was read from the JSON reader when trying to read a resource of type 'microsoft.graph.attachment'; however, a 'StartObject' node was expected.",
            node_kind(v)
        )));
    };
    let odata_type = map
        .get("@odata.type")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            bad(
                "ErrorInvalidRequest",
                "The '@odata.type' annotation is required for an attachment.",
            )
        })?;
    match odata_type {
        "#microsoft.graph.fileAttachment" => {}
        "#microsoft.graph.itemAttachment" | "#microsoft.graph.referenceAttachment" => {
            return Err(bad(
                "ErrorInvalidRequest",
                format!(
                    "Attachment type '{odata_type}' is not supported by the graph-relay emulator."
                ),
            ));
        }
        other => {
            return Err(body_read(format!(
                "A type named '{other}' could not be resolved by the model."
            )));
        }
    }
    let map = object(
        v,
        "microsoft.graph.fileAttachment",
        FILE_ATTACHMENT_PROPERTIES,
    )?;
    for (key, value) in present(map) {
        match key {
            "isInline" => boolean(value)?,
            "size" => {
                if !value.is_u64() {
                    return Err(literal_error(value, "Edm.Int32"));
                }
            }
            _ => {
                string(value)?;
            }
        }
    }
    for required in ["name", "contentBytes"] {
        if map.get(required).is_none_or(Value::is_null) {
            return Err(bad(
                "ErrorInvalidRequest",
                format!("The attachment property '{required}' is required."),
            ));
        }
    }
    // .NET's base64 reader ignores whitespace, so the emulator does too.
    let content: String = map["contentBytes"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if STANDARD.decode(&content).is_err() {
        return Err(literal_error(&map["contentBytes"], "Edm.Binary"));
    }
    Ok(())
}

/// Validates a MIME sendMail body: base64 of an RFC 5322 message whose To/Cc/Bcc headers
/// hold the recipients (there is no envelope).
pub fn check_mime(raw: &[u8]) -> Result<CheckedMime, GraphError> {
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let mime = STANDARD.decode(&text).map_err(|_| {
        bad(
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        )
    })?;
    let mut recipients = Vec::new();
    let mut from = None;
    for (name, value) in headers(&mime) {
        if ["to", "cc", "bcc"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            recipients.extend(addresses(&value));
        } else if name.eq_ignore_ascii_case("from") && from.is_none() {
            from = addresses(&value).into_iter().next();
        }
    }
    check_recipients(&recipients, &[])?;
    Ok(CheckedMime { mime, from })
}

/// The unfolded header fields of an RFC 5322 message (up to the first empty line).
fn headers(mime: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(mime);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    fields
}

/// The addresses of an address-list header value: splits at commas outside quotes, comments
/// and angle brackets; takes `<addr>` when present; skips group names and empty groups.
fn addresses(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut current, mut quoted, mut comment, mut angle) = (String::new(), false, 0usize, false);
    for c in value.chars() {
        match c {
            '"' if comment == 0 => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => {
                comment -= 1;
                continue;
            }
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            ',' | ';' if !quoted && comment == 0 && !angle => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        if comment == 0 {
            current.push(c);
        }
    }
    items.push(current);
    items
        .iter()
        .filter_map(|item| {
            let address = match (item.find('<'), item.rfind('>')) {
                (Some(start), Some(end)) if start < end => &item[start + 1..end],
                // `group: a@b.c` keeps the address after the group name.
                _ => item.rsplit(':').next().unwrap_or_default(),
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        assert_eq!(
            addresses(
                r#""Wilber, Alex" <alexw@contoso.com>, ar@contoso.com (AR), undisclosed-recipients:;"#
            ),
            ["alexw@contoso.com", "ar@contoso.com"]
        );
        assert_eq!(addresses("team: a@x.org, b@x.org;"), ["a@x.org", "b@x.org"]);
    }

    #[test]
    fn plausibility() {
        assert!(plausible_address("a@b.co"));
        for bad in [
            "",
            "a",
            "a@b",
            "a@b.c;d@e.f",
            "a b@c.d",
            "@b.c",
            "a@.b",
            "a@b.c.",
        ] {
            assert!(!plausible_address(bad), "{bad}");
        }
    }
}
