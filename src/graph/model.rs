//! Serde types for the Graph sendMail request body.
#[derive(serde::Serialize)]
pub struct SendMailRequest {}
