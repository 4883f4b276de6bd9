//! The SMTP front door: [`listener`] accepts connections, [`session`] runs each one's state
//! machine on top of smtp-proto's parser, and [`reply`] holds every answer the relay gives.

pub mod listener;
pub mod reply;
pub mod session;

pub use listener::Listener;
pub use session::{Session, SessionContext};
