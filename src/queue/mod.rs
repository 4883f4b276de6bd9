//! The queue between SMTP and Graph: [`spool`] keeps every acknowledged message on disk until it
//! is delivered or failed; [`scheduler`] decides which entries are due and runs their deliveries.

pub mod scheduler;
pub mod spool;

pub use spool::{EntryMeta, Envelope, QueueId, Spool, SpoolError};
