//! Whether a connection is idle: requests in progress on it, and since when it has had none.
//!
//! hyper gives HTTP/2 no head timer and no idle timeout; its keep-alive pings end only a
//! client that does not answer them. The connection loop ([`super::server`]) closes an HTTP/2
//! connection that has had no request in progress for the read timeout, so that a client
//! cannot hold one for ever by answering pings, or by trickling a header block (a request is
//! in progress only once its head is complete).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// The requests in progress on one connection.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted: the origin of `idle_since_ms`.
    opened: Instant,
    /// Requests in progress.
    open: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request (0: none yet).
    idle_since_ms: AtomicU64,
}

/// One request in progress; dropping it ends the request.
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl Activity {
    /// A connection accepted now, idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
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
        let activity = Activity::new();
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
        let activity = Activity::new();
        activity.idle_for(Duration::from_secs(2)).await;
        assert_eq!(accepted.elapsed(), Duration::from_secs(2));
    }
}
