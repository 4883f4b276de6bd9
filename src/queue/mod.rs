//! The queue between SMTP and Graph: [`spool`] keeps every acknowledged message on disk until it
//! is delivered or failed; [`scheduler`] decides which entries are due and runs their deliveries
//! within Graph's limits; [`retry`] classifies failed attempts and decides what happens next;
//! [`metrics`] counts what operators must see; [`pacing`] keeps a mailbox within a configured pace;
//! [`pauses`] keeps Retry-After pauses across a restart; [`ack`] lets an SMTP session wait for the first
//! attempt; [`control`] and [`cli`] are the `queue` command.

pub mod ack;
pub mod cli;
pub mod control;
pub mod dsn;
#[cfg(test)]
pub(crate) mod faulty_fs;
pub mod metrics;
pub mod pacing;
pub mod pauses;
pub mod retry;
pub mod scheduler;
pub mod spool;

pub use spool::{EntryMeta, Envelope, Origin, QueueId, Spool, SpoolError};
