//! The Microsoft side: app-only tokens from Entra ([`token`]) and the Graph `sendMail` call
//! ([`client`]), with the request body types in [`model`]. `--dry-run` swaps the client for
//! [`dry_run`], which writes each request to a file instead.

pub mod client;
pub mod dry_run;
pub mod model;
pub mod token;
pub mod upload;
