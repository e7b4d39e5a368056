//! Whether a connection is idle: requests in progress on it, and since when it has had none.
//!
//! hyper gives HTTP/2 no head timer and no idle timeout; its keep-alive pings end only a
//! client that does not answer them. The connection loop ([`super::server`]) closes an HTTP/2
//! connection that has had no request in progress for the read timeout, so that a client
//! cannot hold one for ever by answering pings, or by trickling a header block. A request is
//! in progress from the moment its head is complete until its handler has returned the answer,
//! and a new connection is idle from its accept (like the HTTP/1 head timer). What hyper still
//! has to send of an answer is counted apart: an idle connection asked to close is dropped only
//! once every byte of its answers has been written ([`Counted`]), so a client still reading a
//! large answer, however slowly, gets all of it.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// The requests in progress on one connection.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted: the origin of `idle_since_ms`.
    opened: Instant,
    /// Requests in progress.
    open: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request (0: none yet).
    idle_since_ms: AtomicU64,
    /// Bytes of answer bodies handed to hyper.
    owed: AtomicU64,
    /// Bytes written to the socket (bodies, and everything else hyper writes).
    written: AtomicU64,
}

/// One request in progress; dropping it ends the request.
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl Activity {
    /// A connection accepted at `accepted`, idle from then.
    pub fn since(accepted: std::time::Instant) -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::from_std(accepted),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Notes `bytes` of an answer's body handed to hyper.
    pub fn owe(&self, bytes: usize) {
        self.owed.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Whether hyper may still hold answer bytes it has not written: a handler that returned
    /// is not the end of its answer, as HTTP/2 buffers a body its client's window cannot take
    /// yet. Counts every byte written, so it can only err towards "all sent" by the size of
    /// the frames around the bodies.
    pub fn has_unsent(&self) -> bool {
        self.written.load(Ordering::Relaxed) < self.owed.load(Ordering::Relaxed)
    }

    /// Counts a request in progress until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.open.fetch_add(1, Ordering::SeqCst);
        InProgress(Arc::clone(self))
    }

    /// Whether no request is in progress.
    pub fn is_idle(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// Resolves once the connection has had no request in progress for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            if !self.is_idle() {
                tokio::time::sleep(limit).await;
                continue;
            }
            let since =
                self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
            let deadline = since + limit;
            if Instant::now() >= deadline {
                // Busy again in between? The next turn of the loop tells.
                if self.is_idle() {
                    return;
                }
                continue;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A socket whose writes are counted into its connection's [`Activity`], if it has one.
pub struct Counted<T> {
    io: T,
    activity: Option<Arc<Activity>>,
}

impl<T> Counted<T> {
    /// Wraps `io`, counting its writes into `activity` (none: counting nothing).
    pub fn new(io: T, activity: Option<Arc<Activity>>) -> Self {
        Self { io, activity }
    }

    fn count(&self, written: &Poll<io::Result<usize>>) {
        if let (Some(activity), Poll::Ready(Ok(n))) = (&self.activity, written) {
            activity.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let activity = &self.0;
        let now_ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Written before the count falls, so a watcher that sees no request sees this end.
        activity.idle_since_ms.fetch_max(now_ms, Ordering::SeqCst);
        activity.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let activity = Activity::since(Instant::now().into_std());
        let limit = Duration::from_secs(2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let request = activity.begin();
        // Busy: never idle, however long the request takes.
        assert!(
            tokio::time::timeout(Duration::from_secs(10), activity.idle_for(limit))
                .await
                .is_err()
        );
        drop(request);
        let ended = Instant::now();
        activity.idle_for(limit).await;
        assert_eq!(ended.elapsed(), limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_request_is_idle_from_its_accept() {
        let accepted = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let activity = Activity::since(accepted.into_std());
        activity.idle_for(Duration::from_secs(2)).await;
        assert_eq!(accepted.elapsed(), Duration::from_secs(2));
    }
}
