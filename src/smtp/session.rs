//! One SMTP connection's state machine. smtp-proto turns bytes into requests; this module decides
//! every reply, streams message bodies into the spool, and answers `250 Queued as <id>` only after
//! the spool has committed the message. Generic over its stream, so tests drive it in memory.

use std::net::SocketAddr;
use std::slice::Iter;
use std::sync::Arc;

use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, DummyLineReceiver, MAX_LINE_LENGTH,
    RequestReceiver,
};
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::reply::Reply;
use crate::config::Config;
use crate::queue::scheduler::QueueHandle;
use crate::queue::spool::{Envelope, IncomingMessage, Spool, SpoolError, now_ms};

/// Bytes read from the socket at a time, and the most body data held in memory per session.
const BUFFER_SIZE: usize = 64 * 1024;

/// What every session of a listener shares.
pub struct SessionContext {
    /// The running configuration; replaced on reload. Each session keeps the one it started with.
    pub config: tokio::sync::watch::Receiver<Arc<Config>>,
    pub spool: Arc<Spool>,
    pub queue: QueueHandle,
}

/// Where the byte stream is: in commands, in a message body, or skipping input.
enum State {
    Command(RequestReceiver),
    Data(DataReceiver),
    /// A BDAT chunk and its announced size.
    Bdat(BdatReceiver, usize),
    /// The rest of an over-long command line.
    SkipLine(DummyLineReceiver),
    /// The rest of a message that will not be accepted, answered with `reply` at its end.
    SkipData(DummyDataReceiver, Reply),
}

/// One MAIL FROM … DATA transaction.
struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
    /// The body file, created on the first flush.
    incoming: Option<IncomingMessage>,
    /// Body bytes not yet written to the spool.
    pending: Vec<u8>,
    /// Body bytes received so far (written and pending).
    size: u64,
    /// BDAT was used; DATA may no longer be.
    chunking: bool,
}

/// What the synchronous parser needs the async shell to do next.
enum Action {
    Continue,
    /// `pending` has grown past the buffer size: write it to the spool.
    Flush,
    /// The message is complete: write the rest, commit, answer.
    Commit,
    Close,
}

pub struct Session<S> {
    stream: S,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    config: Arc<Config>,
    state: State,
    helo: Option<String>,
    transaction: Option<Transaction>,
    /// Replies not yet written; pipelined commands are answered together, in order.
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, ctx: Arc<SessionContext>) -> Self {
        let config = ctx.config.borrow().clone();
        Self {
            stream,
            peer,
            ctx,
            config,
            state: State::Command(RequestReceiver::default()),
            helo: None,
            transaction: None,
            out: Vec::with_capacity(512),
        }
    }

    /// Runs the session until the client quits, goes idle, or the relay shuts down.
    ///
    /// # Errors
    /// Socket errors; the open transaction, never acknowledged, is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) -> std::io::Result<()> {
        let result = self.serve(&shutdown).await;
        self.abort_transaction();
        result
    }

    async fn serve(&mut self, shutdown: &CancellationToken) -> std::io::Result<()> {
        self.push(Reply::greeting(&self.config.smtp.hostname));
        self.write_out().await?;
        let mut buf = vec![0u8; BUFFER_SIZE];
        loop {
            let idle = self.config.smtp.idle_timeout;
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled(), if self.between_transactions() => {
                    self.push(Reply::SHUTTING_DOWN);
                    return self.write_out().await;
                }
                read = tokio::time::timeout(idle, self.stream.read(&mut buf)) => read,
            };
            let n = match read {
                Err(_elapsed) => {
                    tracing::info!(client = %self.peer, "closing idle session");
                    self.push(Reply::IDLE_TIMEOUT);
                    return self.write_out().await;
                }
                Ok(Ok(0)) => return Ok(()),
                Ok(result) => result?,
            };
            let mut pos = 0;
            while pos < n {
                let mut bytes = buf[pos..n].iter();
                let action = self.ingest(&mut bytes);
                pos = n - bytes.as_slice().len();
                match action {
                    Action::Continue => {}
                    Action::Flush => self.flush_body().await,
                    Action::Commit => self.commit().await,
                    Action::Close => return self.write_out().await,
                }
            }
            self.write_out().await?;
        }
    }

    fn between_transactions(&self) -> bool {
        self.transaction.is_none() && matches!(self.state, State::Command(_))
    }

    fn push(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Consumes bytes for the current state and says what must happen next.
    fn ingest(&mut self, bytes: &mut Iter<'_, u8>) -> Action {
        match &mut self.state {
            State::Command(receiver) => {
                if over_long(receiver, bytes.as_slice()) {
                    let rest = bytes.as_slice();
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            *bytes = rest[end + 1..].iter();
                            *receiver = RequestReceiver::default();
                        }
                        None => {
                            *bytes = [].iter();
                            self.state = State::SkipLine(DummyLineReceiver::default());
                        }
                    }
                    self.push(Reply::LINE_TOO_LONG);
                    return Action::Continue;
                }
                match receiver.ingest(bytes) {
                    Ok(request) => {
                        let request = request.into_owned();
                        self.handle(request)
                    }
                    Err(ParseError::NeedsMoreData { .. }) => Action::Continue,
                    Err(ParseError::ResponseTooLong) => {
                        self.state = State::SkipLine(DummyLineReceiver::default());
                        self.push(Reply::LINE_TOO_LONG);
                        Action::Continue
                    }
                    Err(err) => {
                        self.push(parse_error_reply(err));
                        Action::Continue
                    }
                }
            }
            State::SkipLine(receiver) => {
                if receiver.ingest(bytes) {
                    self.state = State::Command(RequestReceiver::default());
                }
                Action::Continue
            }
            State::SkipData(receiver, reply) => {
                if receiver.ingest(bytes) {
                    let reply = reply.clone();
                    self.state = State::Command(RequestReceiver::default());
                    self.abort_transaction();
                    self.push(reply);
                }
                Action::Continue
            }
            State::Data(receiver) => {
                let Some(tx) = self.transaction.as_mut() else {
                    unreachable!("DATA state always has a transaction");
                };
                let before = tx.pending.len();
                let done = receiver.ingest(bytes, &mut tx.pending);
                tx.size += (tx.pending.len() - before) as u64;
                if tx.size > self.config.smtp.max_message_size {
                    let skip = DummyDataReceiver::new_data(receiver);
                    tx.pending.clear();
                    if done {
                        self.state = State::Command(RequestReceiver::default());
                        self.abort_transaction();
                        self.push(Reply::MESSAGE_TOO_BIG);
                    } else {
                        self.state = State::SkipData(skip, Reply::MESSAGE_TOO_BIG);
                    }
                    return Action::Continue;
                }
                if done {
                    self.state = State::Command(RequestReceiver::default());
                    Action::Commit
                } else if tx.pending.len() >= BUFFER_SIZE {
                    Action::Flush
                } else {
                    Action::Continue
                }
            }
            State::Bdat(receiver, chunk_size) => {
                let chunk_size = *chunk_size;
                let Some(tx) = self.transaction.as_mut() else {
                    unreachable!("BDAT state always has a transaction");
                };
                let before = tx.pending.len();
                let done = receiver.ingest(bytes, &mut tx.pending);
                tx.size += (tx.pending.len() - before) as u64;
                if !done {
                    return if tx.pending.len() >= BUFFER_SIZE {
                        Action::Flush
                    } else {
                        Action::Continue
                    };
                }
                let is_last = receiver.is_last;
                self.state = State::Command(RequestReceiver::default());
                if is_last {
                    return Action::Commit;
                }
                let flush = tx.pending.len() >= BUFFER_SIZE;
                self.push(Reply::chunk_received(chunk_size));
                if flush {
                    Action::Flush
                } else {
                    Action::Continue
                }
            }
        }
    }

    /// Decides the reply to one command.
    fn handle(&mut self, request: Request<String>) -> Action {
        match request {
            Request::Ehlo { host } => {
                self.abort_transaction();
                Reply::write_ehlo(
                    &mut self.out,
                    &self.config.smtp.hostname,
                    self.config.smtp.max_message_size,
                );
                self.helo = Some(host);
            }
            Request::Helo { host } => {
                self.abort_transaction();
                self.push(Reply::helo(&self.config.smtp.hostname));
                self.helo = Some(host);
            }
            Request::Mail { from } => {
                let reply = if self.helo.is_none() {
                    Reply::HELLO_FIRST
                } else if self.transaction.is_some() {
                    Reply::NESTED_MAIL
                } else if from.size as u64 > self.config.smtp.max_message_size {
                    Reply::MESSAGE_TOO_BIG
                } else {
                    self.transaction = Some(Transaction {
                        mail_from: from.address,
                        rcpt_to: Vec::new(),
                        incoming: None,
                        pending: Vec::new(),
                        size: 0,
                        chunking: false,
                    });
                    Reply::SENDER_OK
                };
                self.push(reply);
            }
            Request::Rcpt { to } => {
                let max = self.config.smtp.max_recipients;
                let reply = match self.transaction.as_mut() {
                    None => Reply::MAIL_FIRST,
                    Some(_) if to.address.is_empty() => Reply::EMPTY_RECIPIENT,
                    Some(tx)
                        if tx
                            .rcpt_to
                            .iter()
                            .any(|r| r.eq_ignore_ascii_case(&to.address)) =>
                    {
                        Reply::RECIPIENT_DUPLICATE
                    }
                    Some(tx) if tx.rcpt_to.len() >= max => Reply::TOO_MANY_RECIPIENTS,
                    Some(tx) => {
                        tx.rcpt_to.push(to.address);
                        Reply::RECIPIENT_OK
                    }
                };
                self.push(reply);
            }
            Request::Data => match self.transaction.as_mut() {
                None => self.push(Reply::MAIL_FIRST),
                Some(tx) if tx.rcpt_to.is_empty() => self.push(Reply::RCPT_FIRST),
                Some(tx) if tx.chunking => self.push(Reply::syntax("BDAT already in use")),
                Some(_) => {
                    let mut receiver = DataReceiver::new();
                    // Primes the receiver as if a line had just ended, so that an empty message
                    // (".") and a dot-stuffed first line are recognised.
                    receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                    self.state = State::Data(receiver);
                    self.push(Reply::START_DATA);
                }
            },
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                let max = self.config.smtp.max_message_size;
                let refusal = match self.transaction.as_mut() {
                    None => Some(Reply::MAIL_FIRST),
                    Some(tx) if tx.rcpt_to.is_empty() => Some(Reply::RCPT_FIRST),
                    Some(tx) if tx.size + chunk_size as u64 > max => Some(Reply::MESSAGE_TOO_BIG),
                    Some(tx) => {
                        tx.chunking = true;
                        None
                    }
                };
                match refusal {
                    // The chunk's bytes follow regardless: skip them, then answer.
                    Some(reply) => {
                        self.state =
                            State::SkipData(DummyDataReceiver::new_bdat(chunk_size), reply);
                    }
                    None if chunk_size == 0 && is_last => {
                        return Action::Commit;
                    }
                    None => {
                        self.state =
                            State::Bdat(BdatReceiver::new(chunk_size, is_last), chunk_size);
                    }
                }
            }
            Request::Rset => {
                self.abort_transaction();
                self.push(Reply::RESET);
            }
            Request::Noop { .. } => self.push(Reply::OK),
            Request::Vrfy { .. } => self.push(Reply::VRFY_REFUSED),
            Request::Quit => {
                self.push(Reply::CLOSING);
                return Action::Close;
            }
            Request::Lhlo { .. }
            | Request::Auth { .. }
            | Request::StartTls
            | Request::Expn { .. }
            | Request::Help { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.push(Reply::NOT_IMPLEMENTED),
        }
        Action::Continue
    }

    /// Drops the open transaction and its partial body.
    fn abort_transaction(&mut self) {
        if let Some(incoming) = self.transaction.take().and_then(|tx| tx.incoming) {
            let spool = self.ctx.spool.clone();
            // Unlinking is quick but blocking; nobody waits for it.
            tokio::task::spawn_blocking(move || spool.abort(incoming));
        }
    }

    /// Writes pending body bytes to the spool, off the async threads.
    async fn flush_body(&mut self) {
        let Some(tx) = self.transaction.as_mut() else {
            return;
        };
        let spool = self.ctx.spool.clone();
        let incoming = tx.incoming.take();
        let pending = std::mem::take(&mut tx.pending);
        let result = tokio::task::spawn_blocking(move || {
            let mut incoming = match incoming {
                Some(incoming) => incoming,
                None => spool.receive()?,
            };
            match spool.append(&mut incoming, &pending) {
                Ok(()) => Ok((incoming, pending)),
                Err(err) => {
                    spool.abort(incoming);
                    Err(err)
                }
            }
        })
        .await
        .unwrap_or_else(|join| Err(join_error(join)));
        match result {
            Ok((incoming, mut pending)) => {
                pending.clear();
                tx.incoming = Some(incoming);
                tx.pending = pending;
            }
            Err(err) => {
                tracing::error!(client = %self.peer, error = %err, "cannot spool message body");
                let skip = match &self.state {
                    State::Data(receiver) => Some(DummyDataReceiver::new_data(receiver)),
                    _ => None,
                };
                self.transaction = None;
                match skip {
                    Some(skip) => self.state = State::SkipData(skip, Reply::LOCAL_ERROR),
                    None => {
                        self.state = State::Command(RequestReceiver::default());
                        self.push(Reply::LOCAL_ERROR);
                    }
                }
            }
        }
    }

    /// Commits the complete message and answers; `250` only once it is durable.
    async fn commit(&mut self) {
        let Some(tx) = self.transaction.take() else {
            return;
        };
        let spool = self.ctx.spool.clone();
        let envelope = Envelope {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            client: self.peer.to_string(),
            received_at_ms: now_ms(),
        };
        let (incoming, pending) = (tx.incoming, tx.pending);
        let result = tokio::task::spawn_blocking(move || {
            let mut incoming = match incoming {
                Some(incoming) => incoming,
                None => spool.receive()?,
            };
            if let Err(err) = spool.append(&mut incoming, &pending) {
                spool.abort(incoming);
                return Err(err);
            }
            spool.commit(incoming, envelope)
        })
        .await
        .unwrap_or_else(|join| Err(join_error(join)));
        match result {
            Ok(meta) => {
                tracing::info!(
                    queue_id = %meta.id,
                    client = %self.peer,
                    mail_from = %meta.envelope.mail_from,
                    recipients = meta.envelope.rcpt_to.len(),
                    size = tx.size,
                    "message queued"
                );
                metrics::counter!(crate::telemetry::MESSAGES_RECEIVED).increment(1);
                self.push(Reply::queued(meta.id));
                self.ctx.queue.enqueue(meta);
            }
            Err(err) if err.is_full() => {
                tracing::warn!(client = %self.peer, error = %err, "spool full; message refused for now");
                self.push(Reply::SPOOL_FULL);
            }
            Err(err) => {
                tracing::error!(client = %self.peer, error = %err, "cannot commit message to the spool");
                self.push(Reply::LOCAL_ERROR);
            }
        }
    }
}

/// Whether the command line being received exceeds smtp-proto's limit. The parser only checks
/// lines split across reads, so a long line arriving whole is caught here.
fn over_long(receiver: &mut RequestReceiver, rest: &[u8]) -> bool {
    let line = rest
        .iter()
        .position(|&b| b == b'\n')
        .map_or(rest.len(), |end| end + 1);
    receiver.buf().len() + line > MAX_LINE_LENGTH
}

fn join_error(join: tokio::task::JoinError) -> SpoolError {
    SpoolError::Io {
        path: "spool task".into(),
        source: std::io::Error::other(join),
    }
}

fn parse_error_reply(err: ParseError) -> Reply {
    match err {
        ParseError::InvalidSenderAddress => Reply::BAD_SENDER_ADDRESS,
        ParseError::InvalidRecipientAddress => Reply::BAD_RECIPIENT_ADDRESS,
        ParseError::SyntaxError { syntax } => Reply::syntax(syntax),
        ParseError::InvalidParameter { param } => Reply::syntax(param),
        ParseError::UnsupportedParameter { param } => Reply::unsupported_parameter(&param),
        ParseError::ResponseTooLong => Reply::LINE_TOO_LONG,
        ParseError::UnknownCommand
        | ParseError::NeedsMoreData { .. }
        | ParseError::InvalidResponse { .. } => Reply::COMMAND_UNRECOGNIZED,
    }
}

#[cfg(test)]
mod tests;
