//! Conversion of a raw MIME message and its envelope into a Graph sendMail request.
use crate::graph::model::SendMailRequest;
pub struct Converted {
    pub sender: String,
    pub request: SendMailRequest,
    pub message_id: Option<String>,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct ConvertError;
pub fn convert(
    _raw: &[u8],
    _mail_from: &str,
    _rcpt_to: &[String],
) -> Result<Converted, ConvertError> {
    Err(ConvertError)
}
