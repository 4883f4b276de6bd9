//! One SMTP connection's state machine. smtp-proto turns bytes into requests; this module decides
//! every reply, streams message bodies into the spool, and answers `250 Queued as <id>` only after
//! the spool has committed the message. Generic over its stream, so tests drive it in memory
//! (TLS included).

use std::net::SocketAddr;
use std::slice::Iter;
use std::sync::Arc;

use secrecy::SecretString;
use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, DummyLineReceiver, MAX_LINE_LENGTH,
    RequestReceiver,
};
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_SMTPUTF8, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::auth::{self, Lockout};
use super::policy;
use super::reply::{Offer, Reply};
use super::security::Security;
use super::stream::SmtpStream;
use crate::config::{AckMode, Config, ListenerConfig, ListenerMode};
use crate::queue::ack::{Verdict, Wait};
use crate::queue::scheduler::QueueHandle;
use crate::queue::spool::{Envelope, IncomingMessage, Origin, Spool, SpoolError, now_ms};

/// Bytes read from the socket at a time, and the most body data held in memory per session.
const BUFFER_SIZE: usize = 64 * 1024;

/// What every session of a listener shares.
pub struct SessionContext {
    /// The running configuration; replaced on reload. Each session keeps the one it started with.
    pub config: watch::Receiver<Arc<Config>>,
    pub spool: Arc<Spool>,
    pub queue: QueueHandle,
    /// The listener's name: `listen` for `smtp.listen`, else its `[smtp.listeners.NAME]`.
    pub listener: String,
    /// Certificate and users, replaced on reload.
    pub security: watch::Receiver<Arc<Security>>,
    /// Failed AUTH attempts per client address, shared by all listeners.
    pub lockout: Arc<Lockout>,
}

/// Where the byte stream is: in commands, in a message body, or skipping input.
enum State {
    Command(RequestReceiver),
    Data(DataReceiver),
    /// A BDAT chunk and its announced size.
    Bdat(BdatReceiver, usize),
    /// A SASL response line being collected.
    Sasl(SaslStep, Vec<u8>),
    /// The rest of an over-long command line.
    SkipLine(DummyLineReceiver),
    /// The rest of a message that will not be accepted, answered with `reply` at its end.
    SkipData(DummyDataReceiver, Reply),
}

/// Which SASL response is expected next.
enum SaslStep {
    Plain,
    LoginUser,
    LoginPassword(String),
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
    /// MAIL FROM said SMTPUTF8: non-ASCII addresses are allowed.
    smtputf8: bool,
    /// When DATA or the first BDAT came: the transfer deadline counts from here.
    transfer_started: Option<Instant>,
    /// The last body byte stored was CR, so an LF that follows is not a bare LF.
    last_cr: bool,
    /// The message's header block, for the checks at the end of DATA (sender policy, a usable
    /// sender for Graph).
    head: Vec<u8>,
    /// The mailbox Graph will send as, found by those checks.
    sender: Option<String>,
}

/// What the synchronous parser needs the async shell to do next.
enum Action {
    Continue,
    /// `pending` has grown past the buffer size: write it to the spool.
    Flush,
    /// The message is complete: write the rest, commit, answer.
    Commit,
    /// `220` is queued: send it, then run the TLS handshake; pipelined bytes are dropped.
    StartTls,
    /// A complete SASL exchange: check the password.
    Authenticate(String, SecretString),
    Close,
}

pub struct Session<S> {
    stream: SmtpStream<S>,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    config: Arc<Config>,
    listener: ListenerConfig,
    security: Arc<Security>,
    state: State,
    helo: Option<String>,
    /// The SMTP user, after a successful AUTH.
    user: Option<String>,
    transaction: Option<Transaction>,
    /// Replies not yet written; pipelined commands are answered together, in order.
    out: Vec<u8>,
    /// When the current command line, or the current DATA/BDAT transfer, must be complete.
    deadline: Instant,
    /// Transactions started (MAIL FROM accepted) on this connection.
    messages: usize,
    /// Error replies so far.
    errors: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, ctx: Arc<SessionContext>) -> Self {
        let config = ctx.config.borrow().clone();
        let security = ctx.security.borrow().clone();
        let mut listeners = config.smtp.all_listeners().into_iter();
        let listener = listeners
            .clone()
            .find(|(name, _)| *name == ctx.listener)
            .or_else(|| listeners.next())
            .map(|(_, listener)| listener)
            .unwrap_or_default();
        Self {
            stream: SmtpStream::Plain(stream),
            peer,
            deadline: Instant::now() + config.smtp.idle_timeout,
            ctx,
            config,
            listener,
            security,
            state: State::Command(RequestReceiver::default()),
            helo: None,
            user: None,
            transaction: None,
            out: Vec::with_capacity(512),
            messages: 0,
            errors: 0,
        }
    }

    /// Runs the session until the client quits, goes idle, or the relay shuts down. Everything
    /// it logs carries the session id, listener and client address.
    ///
    /// # Errors
    /// Socket errors; the open transaction, never acknowledged, is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) -> std::io::Result<()> {
        let span = tracing::info_span!(
            "smtp",
            session = %ulid::Ulid::generate(),
            listener = %self.ctx.listener,
            client = %self.peer,
            user = tracing::field::Empty,
        );
        async move {
            tracing::info!("session opened");
            let result = self.serve(&shutdown).await;
            self.abort_transaction();
            tracing::info!(
                tls = self.stream.tls_description().as_deref().unwrap_or("none"),
                messages = self.messages,
                errors = self.errors,
                outcome = match &result {
                    Ok(()) => "closed".to_string(),
                    Err(err) => err.to_string(),
                },
                "session closed"
            );
            result
        }
        .instrument(span)
        .await
    }

    async fn serve(&mut self, shutdown: &CancellationToken) -> std::io::Result<()> {
        if !policy::network_allowed(&self.listener.allowed_networks, self.peer.ip()) {
            tracing::warn!("client not in allowed_networks; refused");
            self.push(Reply::NETWORK_REFUSED);
            return self.write_out().await;
        }
        if self.listener.mode == ListenerMode::Tls && !self.start_tls().await? {
            return Ok(());
        }
        self.push(Reply::greeting(&self.config.smtp.hostname));
        self.write_out().await?;
        self.await_command();
        let mut buf = vec![0u8; BUFFER_SIZE];
        loop {
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled(), if self.between_transactions() => {
                    self.push(Reply::SHUTTING_DOWN);
                    return self.write_out().await;
                }
                read = tokio::time::timeout_at(self.deadline, self.stream.read(&mut buf)) => read,
            };
            let n = match read {
                Err(_elapsed) => {
                    let in_transfer = self
                        .transaction
                        .as_ref()
                        .is_some_and(|tx| tx.transfer_started.is_some());
                    tracing::info!(in_transfer, "deadline passed; closing");
                    self.push(if in_transfer {
                        Reply::DATA_TIMEOUT
                    } else {
                        Reply::IDLE_TIMEOUT
                    });
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
                    Action::Commit => {
                        self.commit().await;
                        self.await_command();
                    }
                    Action::StartTls => {
                        self.write_out().await?;
                        if !self.start_tls().await? {
                            return Ok(());
                        }
                        // RFC 3207: whatever was pipelined after STARTTLS is discarded, and the
                        // client starts over with EHLO.
                        pos = n;
                        self.helo = None;
                        self.user = None;
                        self.abort_transaction();
                        self.state = State::Command(RequestReceiver::default());
                        self.await_command();
                    }
                    Action::Authenticate(user, password) => {
                        self.authenticate(user, password).await;
                    }
                    Action::Close => return self.write_out().await,
                }
            }
            self.write_out().await?;
        }
    }

    /// Runs the TLS handshake within the command deadline; `false` if TLS is unavailable or the
    /// handshake failed (the connection is then closed).
    async fn start_tls(&mut self) -> std::io::Result<bool> {
        let Some(acceptor) = self.security.tls.clone() else {
            return Ok(false);
        };
        let limit = self.config.smtp.idle_timeout;
        match tokio::time::timeout(limit, self.stream.upgrade(&acceptor)).await {
            Ok(Ok(())) => {
                tracing::debug!(tls = ?self.stream.tls_description(), "TLS established");
                Ok(true)
            }
            Ok(Err(err)) => {
                tracing::info!(error = %err, "TLS handshake failed");
                Ok(false)
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                Ok(false)
            }
        }
    }

    async fn authenticate(&mut self, user: String, password: SecretString) {
        let security = self.security.clone();
        let name = user.clone();
        let valid = tokio::task::spawn_blocking(move || security.users.verify(&name, &password))
            .await
            .unwrap_or(false);
        let ip = self.peer.ip();
        if valid {
            self.ctx.lockout.record_success(ip);
            tracing::Span::current().record("user", user.as_str());
            tracing::info!(user = %user, "authenticated");
            self.user = Some(user);
            self.push(Reply::AUTH_SUCCEEDED);
        } else {
            self.ctx
                .lockout
                .record_failure(ip, self.config.smtp.auth.lockout);
            tracing::warn!(user = %user, "authentication failed");
            self.push(Reply::AUTH_FAILED);
        }
        self.await_command();
    }

    fn between_transactions(&self) -> bool {
        self.transaction.is_none() && matches!(self.state, State::Command(_))
    }

    /// Restarts the deadline for the next command line; within a transfer, its deadline holds.
    fn await_command(&mut self) {
        let transfer = self.transaction.as_ref().and_then(|tx| tx.transfer_started);
        self.deadline = match transfer {
            Some(started) => started + self.config.smtp.data_timeout,
            None => Instant::now() + self.config.smtp.idle_timeout,
        };
    }

    /// Starts (or continues) the DATA/BDAT transfer deadline.
    fn await_transfer(&mut self) {
        if let Some(tx) = self.transaction.as_mut() {
            tx.transfer_started.get_or_insert_with(Instant::now);
        }
        self.await_command();
    }

    fn push(&mut self, reply: Reply) {
        if (400..600).contains(&reply.code) && reply.code != 421 {
            self.errors += 1;
        }
        reply.write_to(&mut self.out);
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            // A client that stops reading must not hold its session (and its slot) forever.
            let (stream, out) = (&mut self.stream, &self.out);
            tokio::time::timeout(self.config.smtp.idle_timeout, async {
                stream.write_all(out).await?;
                stream.flush().await
            })
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
            })??;
            self.out.clear();
        }
        Ok(())
    }

    /// What this session may use now, as announced in EHLO.
    fn offer(&self) -> Offer {
        let tls = self.stream.is_tls();
        Offer {
            starttls: self.security.tls.is_some() && !tls,
            auth: !self.security.users.is_empty() && (tls || self.listener.plaintext_auth),
        }
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
                    return self.after_command(Action::Continue);
                }
                let action = match receiver.ingest(bytes) {
                    Ok(request) => {
                        let request = request.into_owned();
                        self.await_command();
                        self.handle(request)
                    }
                    Err(ParseError::NeedsMoreData { .. }) => return Action::Continue,
                    Err(ParseError::ResponseTooLong) => {
                        self.state = State::SkipLine(DummyLineReceiver::default());
                        self.push(Reply::LINE_TOO_LONG);
                        Action::Continue
                    }
                    Err(err) => {
                        self.push(parse_error_reply(err));
                        Action::Continue
                    }
                };
                self.after_command(action)
            }
            State::Sasl(..) => self.ingest_sasl(bytes),
            State::SkipLine(receiver) => {
                if receiver.ingest(bytes) {
                    self.state = State::Command(RequestReceiver::default());
                }
                Action::Continue
            }
            State::SkipData(receiver, reply) => {
                if receiver.ingest(bytes) {
                    let reply = reply.clone();
                    let (size, mail_from) = self
                        .transaction
                        .as_ref()
                        .map_or((0, ""), |tx| (tx.size, tx.mail_from.as_str()));
                    tracing::info!(
                        reply = reply.code,
                        reason = reply.text(),
                        size,
                        mail_from,
                        "message refused"
                    );
                    self.state = State::Command(RequestReceiver::default());
                    self.abort_transaction();
                    self.push(reply);
                    self.await_command();
                }
                Action::Continue
            }
            State::Data(receiver) => {
                let Some(tx) = self.transaction.as_mut() else {
                    unreachable!("DATA state always has a transaction");
                };
                let before = tx.pending.len();
                let done = ingest_bounded(bytes, &mut tx.pending, |bytes, pending| {
                    receiver.ingest(bytes, pending)
                });
                tx.take_body(before);
                if tx.size > size_limit(&self.config) {
                    let skip = DummyDataReceiver::new_data(receiver);
                    tx.pending.clear();
                    if done {
                        self.state = State::Command(RequestReceiver::default());
                        self.abort_transaction();
                        self.push(Reply::MESSAGE_TOO_BIG);
                        self.await_command();
                    } else {
                        self.state = State::SkipData(skip, Reply::MESSAGE_TOO_BIG);
                    }
                    return Action::Continue;
                }
                if done {
                    self.state = State::Command(RequestReceiver::default());
                    self.complete_message()
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
                let done = ingest_bounded(bytes, &mut tx.pending, |bytes, pending| {
                    receiver.ingest(bytes, pending)
                });
                tx.take_body(before);
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
                    return self.complete_message();
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

    /// Closes a session that has had too many error replies.
    fn after_command(&mut self, action: Action) -> Action {
        if self.errors >= self.config.smtp.max_errors && !matches!(action, Action::Close) {
            tracing::info!(errors = self.errors, "too many errors; closing");
            self.push(Reply::TOO_MANY_ERRORS);
            return Action::Close;
        }
        action
    }

    /// The whole message is in: checks its From against `sender_policy` and that Graph will have
    /// a mailbox to send it as, then commits.
    fn complete_message(&mut self) -> Action {
        let Some(tx) = self.transaction.as_mut() else {
            return Action::Commit;
        };
        let head = std::mem::take(&mut tx.head);
        let mail_from = tx.mail_from.clone();
        let smtp = &self.config.smtp;
        let refused_from = if smtp.sender_policy.is_empty() {
            None
        } else {
            header_from(&head).into_iter().find(|from| {
                !policy::sender_allowed(
                    &smtp.sender_policy,
                    self.peer.ip(),
                    self.user.as_deref(),
                    from,
                )
            })
        };
        let refusal = match refused_from {
            Some(from) => {
                tracing::warn!(from = %from, "From address refused by sender_policy");
                Some(Reply::FROM_REFUSED)
            }
            None => {
                let graph = &self.config.graph;
                let mut options = graph.convert_options(&smtp.hostname);
                options.sender =
                    graph.sender_for(&self.listener.sender_override(), self.user.as_deref());
                match crate::convert::check_at_data(&head, &mail_from, &options) {
                    Ok(sender) => {
                        tx.sender = Some(sender);
                        None
                    }
                    Err(refusal) => {
                        tracing::warn!(reason = %refusal.text, "message refused at DATA");
                        Some(Reply::refused_at_data(&refusal))
                    }
                }
            }
        };
        if let Some(reply) = refusal {
            self.abort_transaction();
            self.push(reply);
            self.await_command();
            return Action::Continue;
        }
        Action::Commit
    }

    /// Collects one SASL response line and moves the exchange on.
    fn ingest_sasl(&mut self, bytes: &mut Iter<'_, u8>) -> Action {
        let State::Sasl(_, line) = &mut self.state else {
            return Action::Continue;
        };
        let rest = bytes.as_slice();
        let end = rest.iter().position(|&b| b == b'\n');
        let take = end.map_or(rest.len(), |end| end + 1);
        line.extend_from_slice(&rest[..take]);
        *bytes = rest[take..].iter();
        if line.len() > MAX_LINE_LENGTH {
            let complete = end.is_some();
            self.state = if complete {
                State::Command(RequestReceiver::default())
            } else {
                State::SkipLine(DummyLineReceiver::default())
            };
            self.push(Reply::LINE_TOO_LONG);
            return Action::Continue;
        }
        if end.is_none() {
            return Action::Continue;
        }
        let State::Sasl(step, line) =
            std::mem::replace(&mut self.state, State::Command(RequestReceiver::default()))
        else {
            return Action::Continue;
        };
        self.await_command();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "*" {
            self.push(Reply::AUTH_CANCELLED);
            return self.after_command(Action::Continue);
        }
        let action = match step {
            SaslStep::Plain => match auth::decode_plain(text) {
                Some((user, password)) => Action::Authenticate(user, password),
                None => {
                    self.push(Reply::AUTH_BAD_BASE64);
                    Action::Continue
                }
            },
            SaslStep::LoginUser => match auth::decode(text) {
                Some(user) => self.ask_password(user),
                None => {
                    self.push(Reply::AUTH_BAD_BASE64);
                    Action::Continue
                }
            },
            SaslStep::LoginPassword(user) => match auth::decode(text) {
                Some(password) => Action::Authenticate(user, SecretString::from(password)),
                None => {
                    self.push(Reply::AUTH_BAD_BASE64);
                    Action::Continue
                }
            },
        };
        self.after_command(action)
    }

    fn ask_password(&mut self, user: String) -> Action {
        // "Password:" in base64, as every LOGIN client expects.
        self.push(Reply::challenge("UGFzc3dvcmQ6"));
        self.state = State::Sasl(SaslStep::LoginPassword(user), Vec::new());
        Action::Continue
    }

    /// Starts an AUTH exchange, or refuses it.
    fn handle_auth(&mut self, mechanism: u64, initial: String) -> Action {
        let smtp = &self.config.smtp;
        let refusal = if self.security.users.is_empty() {
            Some(Reply::NOT_IMPLEMENTED)
        } else if self.helo.is_none() {
            Some(Reply::HELLO_FIRST)
        } else if self.user.is_some() {
            Some(Reply::AUTH_ALREADY)
        } else if self.transaction.is_some() {
            Some(Reply::AUTH_IN_TRANSACTION)
        } else if !self.offer().auth {
            Some(Reply::AUTH_NEEDS_TLS)
        } else if self.ctx.lockout.is_locked(
            self.peer.ip(),
            smtp.auth.max_failures,
            smtp.auth.lockout,
        ) {
            tracing::warn!("AUTH refused: address locked out after failed attempts");
            Some(Reply::AUTH_LOCKED)
        } else {
            None
        };
        if let Some(reply) = refusal {
            self.push(reply);
            return Action::Continue;
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.push(Reply::challenge(""));
                self.state = State::Sasl(SaslStep::Plain, Vec::new());
                Action::Continue
            }
            AUTH_PLAIN => match auth::decode_plain(&initial) {
                Some((user, password)) => Action::Authenticate(user, password),
                None => {
                    self.push(Reply::AUTH_BAD_BASE64);
                    Action::Continue
                }
            },
            AUTH_LOGIN if initial.is_empty() => {
                // "Username:" in base64.
                self.push(Reply::challenge("VXNlcm5hbWU6"));
                self.state = State::Sasl(SaslStep::LoginUser, Vec::new());
                Action::Continue
            }
            AUTH_LOGIN => match auth::decode(&initial) {
                Some(user) => self.ask_password(user),
                None => {
                    self.push(Reply::AUTH_BAD_BASE64);
                    Action::Continue
                }
            },
            _ => {
                self.push(Reply::AUTH_MECHANISM);
                Action::Continue
            }
        }
    }

    /// The refusal for MAIL FROM, if any, and whether the session must then close.
    fn mail_refusal(&self, from: &smtp_proto::MailFrom<String>) -> Option<Reply> {
        let smtp = &self.config.smtp;
        let refusal = if self.helo.is_none() {
            Reply::HELLO_FIRST
        } else if self.transaction.is_some() {
            Reply::NESTED_MAIL
        } else if self.listener.mode == ListenerMode::Starttls && !self.stream.is_tls() {
            Reply::STARTTLS_FIRST
        } else if self.listener.require_auth && self.user.is_none() {
            Reply::AUTH_REQUIRED
        } else if self.messages >= smtp.max_messages_per_connection {
            Reply::TOO_MANY_MESSAGES
        } else if from.size as u64 > size_limit(&self.config) {
            Reply::MESSAGE_TOO_BIG
        } else if !from.address.is_ascii() && from.flags & MAIL_SMTPUTF8 == 0 {
            Reply::NEEDS_SMTPUTF8
        } else if !from.address.is_empty() && !crate::convert::is_plain_address(&from.address) {
            // It may become the From header of a MIME message (`graph.sender = "envelope"`).
            Reply::BAD_SENDER_ADDRESS
        } else if !policy::sender_allowed(
            &smtp.sender_policy,
            self.peer.ip(),
            self.user.as_deref(),
            &from.address,
        ) {
            tracing::warn!(mail_from = %from.address, "sender refused by sender_policy");
            Reply::SENDER_REFUSED
        } else {
            return None;
        };
        Some(refusal)
    }

    /// Decides the reply to one command.
    fn handle(&mut self, request: Request<String>) -> Action {
        match request {
            Request::Ehlo { host } => {
                self.abort_transaction();
                let offer = self.offer();
                Reply::write_ehlo(
                    &mut self.out,
                    &self.config.smtp.hostname,
                    size_limit(&self.config),
                    offer,
                );
                self.helo = Some(host);
            }
            Request::Helo { host } => {
                self.abort_transaction();
                self.push(Reply::helo(&self.config.smtp.hostname));
                self.helo = Some(host);
            }
            Request::Mail { from } => match self.mail_refusal(&from) {
                Some(reply) => {
                    let close = reply.code == 421;
                    self.push(reply);
                    if close {
                        return Action::Close;
                    }
                }
                None => {
                    self.messages += 1;
                    self.transaction = Some(Transaction {
                        smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
                        mail_from: from.address,
                        rcpt_to: Vec::new(),
                        incoming: None,
                        pending: Vec::new(),
                        size: 0,
                        chunking: false,
                        transfer_started: None,
                        last_cr: false,
                        head: Vec::new(),
                        sender: None,
                    });
                    self.push(Reply::SENDER_OK);
                }
            },
            Request::Rcpt { to } => {
                let smtp = &self.config.smtp;
                let max = smtp.max_recipients;
                let reply = match self.transaction.as_mut() {
                    None => Reply::MAIL_FIRST,
                    Some(_) if to.address.is_empty() => Reply::EMPTY_RECIPIENT,
                    Some(tx) if !tx.smtputf8 && !to.address.is_ascii() => Reply::NEEDS_SMTPUTF8,
                    Some(tx) => {
                        match policy::recipient_refusal(
                            &to.address,
                            &smtp.allowed_recipient_domains,
                        ) {
                            Some(refusal) => {
                                tracing::info!(rcpt_to = %to.address, code = refusal.code, "recipient refused");
                                refusal
                            }
                            None if tx
                                .rcpt_to
                                .iter()
                                .any(|r| r.eq_ignore_ascii_case(&to.address)) =>
                            {
                                Reply::RECIPIENT_DUPLICATE
                            }
                            None if tx.rcpt_to.len() >= max => Reply::TOO_MANY_RECIPIENTS,
                            None => {
                                tx.rcpt_to.push(to.address);
                                Reply::RECIPIENT_OK
                            }
                        }
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
                    self.await_transfer();
                    self.push(Reply::START_DATA);
                }
            },
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                let max = size_limit(&self.config);
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
                        return self.complete_message();
                    }
                    None => {
                        self.state =
                            State::Bdat(BdatReceiver::new(chunk_size, is_last), chunk_size);
                        self.await_transfer();
                    }
                }
            }
            Request::StartTls => {
                if self.security.tls.is_none() {
                    self.push(Reply::NOT_IMPLEMENTED);
                } else if self.stream.is_tls() {
                    self.push(Reply::TLS_ALREADY_ACTIVE);
                } else {
                    self.push(Reply::READY_TO_START_TLS);
                    return Action::StartTls;
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.handle_auth(mechanism, initial_response),
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
        let mut pending = std::mem::take(&mut tx.pending);
        // A trailing CR may still be taken back by the receiver (see `take_body`): it waits
        // for the next write.
        let held_cr = pending.last() == Some(&b'\r');
        if held_cr {
            pending.pop();
        }
        let result = tokio::task::spawn_blocking(move || {
            let mut incoming = incoming.unwrap_or_else(|| spool.receive());
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
                if held_cr {
                    pending.push(b'\r');
                }
                tx.incoming = Some(incoming);
                tx.pending = pending;
            }
            Err(err) => {
                // A full disk is the same "try later" as a full spool (`queue.max_size`).
                let reply = if err.is_full() {
                    tracing::warn!(client = %self.peer, error = %err, "spool full; message refused for now");
                    Reply::SPOOL_FULL
                } else {
                    tracing::error!(client = %self.peer, error = %err, "cannot spool message body");
                    Reply::LOCAL_ERROR
                };
                let skip = match &self.state {
                    State::Data(receiver) => Some(DummyDataReceiver::new_data(receiver)),
                    _ => None,
                };
                self.transaction = None;
                match skip {
                    Some(skip) => self.state = State::SkipData(skip, reply),
                    None => {
                        self.state = State::Command(RequestReceiver::default());
                        self.push(reply);
                    }
                }
            }
        }
    }

    /// Commits the complete message and answers; `250` only once it is durable, and in the
    /// `synchronous` and `hybrid` acknowledgement modes after the first attempt's verdict.
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
            origin: tx.sender.map(|sender| {
                Box::new(Origin {
                    listener: self.ctx.listener.clone(),
                    user: self.user.clone(),
                    sender,
                })
            }),
        };
        // The rest of the body goes to the spool's writer with the commit: a message that
        // fits the buffer never costs this task a blocking call.
        let incoming = tx.incoming.unwrap_or_else(|| spool.receive());
        let result = spool.commit_async(incoming, tx.pending, envelope).await;
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
                let id = meta.id;
                let wait = match self.config.queue.ack_mode {
                    AckMode::Queued => None,
                    AckMode::Synchronous => {
                        Some((Wait::Synchronous, self.config.smtp.data_timeout))
                    }
                    AckMode::Hybrid => Some((Wait::Hybrid, self.config.queue.ack_wait)),
                };
                let reply = match wait {
                    None => {
                        self.ctx.queue.enqueue(meta);
                        Reply::queued(id)
                    }
                    Some((wait, limit)) => {
                        let watch = self.ctx.queue.enqueue_watched(meta, wait);
                        let verdict = watch.verdict(limit, &self.ctx.spool, id).await;
                        tracing::info!(queue_id = %id, ?verdict, "answered after the first attempt");
                        match verdict {
                            Verdict::Delivered => Reply::delivered(id),
                            Verdict::Queued => Reply::queued(id),
                            Verdict::TryLater => Reply::DELIVERY_DEFERRED,
                            Verdict::TimedOut => Reply::DELIVERY_TIMED_OUT,
                            Verdict::Refused => Reply::DELIVERY_REFUSED,
                        }
                    }
                };
                self.push(reply);
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

impl Transaction {
    /// Accounts for body bytes just appended to `pending` from `from` on: bare LFs become CRLF
    /// (only `<CRLF>.<CRLF>` ended the data; this is storage, not framing), the size grows, and
    /// the header block is kept while `sender_policy` needs it.
    fn take_body(&mut self, from: usize) {
        // At `<CRLF>.<CR><LF>` the receiver takes back the CR it stored while the LF was still
        // to come, which may have been in an earlier read: `pending` can end shorter than it
        // began.
        let taken_back = from.saturating_sub(self.pending.len());
        self.size -= taken_back as u64;
        let from = from - taken_back;
        // memchr jumps from LF to LF: most bodies have no bare one.
        if memchr::memchr_iter(b'\n', &self.pending[from..]).any(|i| !self.preceded_by_cr(from + i))
        {
            let tail = self.pending.split_off(from);
            let mut cr = self.last_cr;
            for b in tail {
                if b == b'\n' && !cr {
                    self.pending.push(b'\r');
                }
                self.pending.push(b);
                cr = b == b'\r';
            }
        }
        if self.pending.len() > from {
            self.last_cr = self.pending.last() == Some(&b'\r');
        }
        let added = &self.pending[from..];
        self.size += added.len() as u64;
        if self.head.len() < BUFFER_SIZE && memchr::memmem::find(&self.head, b"\r\n\r\n").is_none()
        {
            let room = BUFFER_SIZE - self.head.len();
            self.head.extend_from_slice(&added[..added.len().min(room)]);
        }
    }

    fn preceded_by_cr(&self, at: usize) -> bool {
        match at.checked_sub(1) {
            Some(prev) => self.pending[prev] == b'\r',
            None => self.last_cr,
        }
    }
}

/// Feeds a body receiver no more bytes than `pending` has room for, so at most `BUFFER_SIZE`
/// body bytes (plus the CRs added to bare LFs) wait in memory before the next flush. The rest of
/// the read stays in `bytes` for the next call.
fn ingest_bounded(
    bytes: &mut Iter<'_, u8>,
    pending: &mut Vec<u8>,
    ingest: impl FnOnce(&mut Iter<'_, u8>, &mut Vec<u8>) -> bool,
) -> bool {
    let rest = bytes.as_slice();
    let room = BUFFER_SIZE.saturating_sub(pending.len()).max(1);
    let now = &rest[..room.min(rest.len())];
    let mut limited = now.iter();
    let done = ingest(&mut limited, pending);
    // Unconsumed bytes, and everything past the limit, stay for the next call.
    let consumed = now.len() - limited.as_slice().len();
    *bytes = rest[consumed..].iter();
    done
}

/// The largest message a session accepts (EHLO SIZE): `smtp.max_message_size`, lowered to what
/// Graph can take in the configured `graph.large_messages` mode.
fn size_limit(config: &Config) -> u64 {
    config.graph.size_limit(config.smtp.max_message_size)
}

/// The addresses in the From header of a message's header block.
fn header_from(head: &[u8]) -> Vec<String> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |end| end + 4);
    let Some(message) = mail_parser::MessageParser::new().parse_headers(&head[..end]) else {
        return Vec::new();
    };
    message
        .from()
        .map(|from| {
            from.iter()
                .filter_map(|addr| addr.address())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
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
