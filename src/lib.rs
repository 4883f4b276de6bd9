//! graph-relay: an SMTP front door for legacy senders that delivers through Microsoft Graph.
//!
//! The path of one message: [`smtp`] accepts it, [`queue::spool`] makes it durable, the
//! [`queue::scheduler`] decides when it is due, [`delivery`] converts it ([`convert`]) and sends it
//! with a cached app-only token ([`graph`]). [`app`] wires the stages together; [`config`] and
//! [`cli`] sit in front of everything.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod convert;
pub mod delivery;
pub mod graph;
pub mod http;
pub mod queue;
pub mod sendmail;
pub mod smtp;
pub mod telemetry;
