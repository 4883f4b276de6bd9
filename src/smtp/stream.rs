//! The session's byte stream: plain, or TLS after STARTTLS or on an implicit-TLS listener. The
//! session stays generic over the underlying stream, so tests run TLS over in-memory pipes too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub enum SmtpStream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Between giving the plain stream to the TLS handshake and getting it back; or after a
    /// failed handshake, when the connection is gone.
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpStream<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, SmtpStream::Tls(_))
    }

    /// Runs the server side of a TLS handshake over the plain stream.
    ///
    /// # Errors
    /// A failed handshake; the connection is then unusable.
    pub async fn upgrade(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        match std::mem::replace(self, SmtpStream::Closed) {
            SmtpStream::Plain(stream) => {
                *self = SmtpStream::Tls(Box::new(acceptor.accept(stream).await?));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("TLS is already active"))
            }
        }
    }

    /// The TLS version and cipher suite, for the session log.
    pub fn tls_description(&self) -> Option<String> {
        let SmtpStream::Tls(tls) = self else {
            return None;
        };
        let (_, connection) = tls.get_ref();
        Some(format!(
            "{:?} {:?}",
            connection.protocol_version()?,
            connection.negotiated_cipher_suite()?.suite()
        ))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SmtpStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            SmtpStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SmtpStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            SmtpStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SmtpStream::Tls(s) => Pin::new(s).poll_flush(cx),
            SmtpStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SmtpStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            SmtpStream::Closed => Poll::Ready(Ok(())),
        }
    }
}
