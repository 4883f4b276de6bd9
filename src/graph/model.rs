//! Serde types for the Graph sendMail request body.
