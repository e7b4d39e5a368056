//! Closing a connection without destroying the answer on it.
//!
//! Some answers are given before the request's body is read: a 413 to a body declared larger
//! than the API ever reads, a 401 to a request without the token. The connection then closes
//! with the rest of the body still coming. Closing a socket whose received bytes were not read
//! makes the kernel send a reset, and a reset can reach the client before it has read the
//! answer: a client that sends its whole body before reading (most do) then sees "connection
//! reset" instead of the 413 the contract promises.
//!
//! So an answer of that kind arms its connection ([`LingerOnClose::arm`], found in the request's
//! extensions), and when hyper closes an armed connection ([`Lingering`]) it first sends its
//! own end of the stream, then reads and discards what the client still sends until the client
//! closes too, for at most [`LINGER_FOR`] (nginx's `lingering_close` does the same). A connection
//! that is not armed closes as before: a client cut off for being too slow gets no extra time.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};

/// Longest time a closing connection keeps reading what its client still sends.
pub const LINGER_FOR: Duration = Duration::from_secs(5);
/// Size of the buffer the discarded bytes are read into.
const DISCARD_CHUNK: usize = 64 * 1024;

/// Shared by a connection and its requests: whether the connection should linger on close.
#[derive(Debug, Clone, Default)]
pub struct LingerOnClose(Arc<AtomicBool>);

impl LingerOnClose {
    /// Marks the connection: an answer left the request's body unread.
    pub fn arm(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_armed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Arms the connection of `req`, if it has one (requests built in tests have none).
pub fn arm(req: &poem::Request) {
    if let Some(linger) = req.extensions().get::<LingerOnClose>() {
        linger.arm();
    }
}

/// A connection's socket that lingers on close when armed (see the module doc).
pub struct Lingering {
    stream: TcpStream,
    linger: LingerOnClose,
    closing: Closing,
}

/// Where the close of an armed connection stands.
enum Closing {
    /// Not closing yet.
    Open,
    /// Our end is shut; discarding what the client sends until it closes or time runs out.
    Draining {
        until: Pin<Box<Sleep>>,
        discard: Box<[u8]>,
    },
    /// Done: the socket may be dropped.
    Closed,
}

impl Lingering {
    /// Wraps `stream`, lingering on close when `linger` is armed by then.
    pub fn new(stream: TcpStream, linger: LingerOnClose) -> Self {
        Self {
            stream,
            linger,
            closing: Closing::Open,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                    if !this.linger.is_armed() {
                        this.closing = Closing::Closed;
                        continue;
                    }
                    this.closing = Closing::Draining {
                        until: Box::pin(tokio::time::sleep(LINGER_FOR)),
                        discard: vec![0; DISCARD_CHUNK].into_boxed_slice(),
                    };
                }
                Closing::Draining { until, discard } => {
                    if until.as_mut().poll(cx).is_ready() {
                        this.closing = Closing::Closed;
                        continue;
                    }
                    let mut buf = ReadBuf::new(discard);
                    match ready!(Pin::new(&mut this.stream).poll_read(cx, &mut buf)) {
                        // More of the body: dropped; read on (the runtime's budget makes
                        // this yield now and then).
                        Ok(()) if !buf.filled().is_empty() => {}
                        // The client closed its end, or the connection failed: done.
                        Ok(()) | Err(_) => this.closing = Closing::Closed,
                    }
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}
