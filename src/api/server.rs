//! The API's connection loop: accepts TCP connections and serves each with hyper, handing
//! every request to the poem endpoint built in [`super::routes`].
//!
//! Why our own loop and not `poem::Server`: poem 3.1.12 builds hyper's connection without a
//! timer, so hyper's HTTP/1 header-read timeout is silently off, and it offers no setter for the
//! header limits. A client could then hold a connection for ever by trickling a header line now
//! and then (`../shared/HARDENING-FACTS.md` §1). Here each connection gets:
//!
//! * a bound on the protocol sniff (the first bytes that tell HTTP/1 from HTTP/2), and hyper's
//!   `header_read_timeout` with a real timer, together `AI_AGENTS_CLIENT_READ_TIMEOUT_SECS`
//!   counted from the accept: hyper's timer starts only after the sniff, so a client that waited
//!   before its first byte gets the rest of the time, not a fresh period. The head timer also
//!   runs while a kept-alive connection waits for its next request, so it is the idle timeout
//!   too. The body has its own deadline in [`super::middleware::BodyLimit`];
//! * header limits above the ones the API enforces itself ([`super::middleware::HeaderLimits`]),
//!   so that too many or too large headers get a problem+json 431 from our middleware instead
//!   of hyper's empty one; only heads beyond [`MAX_HEAD_BYTES`] still get hyper's bare answer;
//! * on HTTP/2, which has no head timer in hyper, an idle deadline ([`super::idle`]): a
//!   connection with no request in progress for `AI_AGENTS_CLIENT_READ_TIMEOUT_SECS` is closed
//!   (`GOAWAY`, then dropped within [`GOAWAY_WITHIN`] if the client holds on, is still idle and
//!   has been sent every byte of its answers). hyper's keep-alive pings end a client that
//!   does not answer them, but not one whose library does while it sends nothing, or trickles a
//!   request's header block in `CONTINUATION` frames (no request is in progress until the block
//!   is complete);
//! * a lingering close ([`super::linger`]) after an answer that left the request's body unread,
//!   so that the client reads that answer instead of a reset;
//! * graceful shutdown: on the signal the loop stops accepting, every connection finishes the
//!   request it is serving and closes, and whatever is left after the grace period is dropped.
//!
//! Accept errors such as `EMFILE` (out of file descriptors) pause the loop briefly instead of
//! spinning or ending it; the binary raises its open-files limit at start (`crate::os`).
//!
//! What would retire this module: poem's `serve_connection` (`poem/src/server.rs`) calling
//! `.http1().timer(TokioTimer::new()).header_read_timeout(..)` on its builder and exposing
//! `max_headers`/`max_buf_size`, as hyper-util's builder does.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use poem::{Addr, Endpoint, endpoint::BoxEndpoint, web::LocalAddr, web::RemoteAddr};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    idle::{Activity, Counted},
    linger::{LingerOnClose, Lingering},
};

/// Largest request head (request line and headers) hyper buffers before answering 431 itself.
/// Heads up to this size reach the API, which answers 431 as problem+json above its own limits.
pub const MAX_HEAD_BYTES: usize = 1024 * 1024;
/// Most header lines hyper parses; the API's own limit ([`super::middleware::MAX_HEADERS`]) is
/// lower, so a request with too many headers gets a problem+json answer.
const MAX_PARSED_HEADERS: usize = 512;
/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// A sniff that took less than this leaves the shared connection settings in place; a longer
/// one gets settings of its own whose head timer is the time left (see the module doc), also for
/// its later requests: a client that dawdled once gets no more for its kept-alive waits.
const SNIFF_WITHIN: Duration = Duration::from_millis(100);

/// Time an idle HTTP/2 connection has to close after its `GOAWAY` (a ping's round trip) before
/// it is dropped: a client that answers no ping, e.g. one stuck in the middle of a frame, would
/// otherwise keep it until hyper's keep-alive timeout, a second read timeout.
const GOAWAY_WITHIN: Duration = Duration::from_millis(500);

/// Time limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a complete request head (and, on a kept-alive connection, to start the
    /// next one).
    pub read_timeout: Duration,
}

/// Serves `endpoint` on `listener` until `shutdown` resolves; then lets every connection
/// finish its current request within `grace` and returns.
pub async fn serve(
    listener: TcpListener,
    endpoint: BoxEndpoint<'static>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let endpoint = Arc::new(endpoint);
    let builder = Arc::new(connection_builder(limits, limits.read_timeout));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stop = stop.clone();
        let builder = Arc::clone(&builder);
        let endpoint = Arc::clone(&endpoint);
        let accepted = Instant::now();
        connections.spawn(async move {
            let Some(protocol) = protocol_in_time(&stream, limits.read_timeout).await else {
                return;
            };
            let sniffed = accepted.elapsed();
            let builder = if sniffed < SNIFF_WITHIN {
                builder
            } else {
                let left = limits.read_timeout.saturating_sub(sniffed);
                Arc::new(connection_builder(limits, left))
            };
            let linger = LingerOnClose::default();
            // Only HTTP/2 needs the idle watch (HTTP/1 has hyper's head timer); idle from the
            // accept, like that timer.
            let watch = (protocol == Protocol::Http2).then(|| Activity::since(accepted));
            let io = TokioIo::new(Counted::new(
                Lingering::new(stream, linger.clone()),
                watch.clone(),
            ));
            let in_service = watch.clone();
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let endpoint = Arc::clone(&endpoint);
                let linger = linger.clone();
                let in_progress = in_service.as_ref().map(Activity::begin);
                let owed = in_service.clone();
                async move {
                    let _in_progress = in_progress;
                    let mut request = poem::Request::from((
                        request,
                        LocalAddr(Addr::SocketAddr(local)),
                        RemoteAddr(Addr::SocketAddr(remote)),
                        http::uri::Scheme::HTTP,
                    ));
                    request.extensions_mut().insert(linger);
                    let response = endpoint.get_response(request).await;
                    let response = http::Response::<BoxBody<Bytes, std::io::Error>>::from(response);
                    let Some(owed) = owed else {
                        return Ok::<_, Infallible>(response);
                    };
                    Ok(response.map(|body| {
                        BoxBody::new(body.map_frame(move |frame| {
                            if let Some(data) = frame.data_ref() {
                                owed.owe(data.len());
                            }
                            frame
                        }))
                    }))
                }
            });
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            // Idle HTTP/2 connections are asked to close, and dropped [`GOAWAY_WITHIN`] later
            // if they have not.
            let mut closing = false;
            let mut cut_at = None;
            let ended = loop {
                tokio::select! {
                    ended = connection.as_mut() => break ended,
                    // The server-wide grace period bounds what follows.
                    () = stop.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = idle_for(watch.as_deref(), limits.read_timeout), if !closing => {
                        tracing::debug!(remote = %remote, "idle HTTP/2 connection closed");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        cut_at = Some(tokio::time::Instant::now() + GOAWAY_WITHIN);
                    }
                    // Dropped only while still idle and with every answer written: a request
                    // that came in meanwhile, or a client still reading, gets its answer.
                    () = sleep_until_some(cut_at) => {
                        if watch.as_ref().is_none_or(|w| w.is_idle() && !w.has_unsent()) {
                            break Ok(());
                        }
                        cut_at = Some(tokio::time::Instant::now() + GOAWAY_WITHIN);
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; finishing open requests"
    );
    stop.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    Ok(())
}

/// Resolves once `watch` says its connection has been idle for `limit`; never without a watch.
async fn idle_for(watch: Option<&Activity>, limit: Duration) {
    match watch {
        Some(watch) => watch.idle_for(limit).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; for ever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a connection's first bytes said it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// hyper's connection settings: timers and limits as described in the module doc, with
/// `head_within` for HTTP/1 heads (the first one's time left after the sniff).
fn connection_builder(
    limits: ConnectionLimits,
    head_within: Duration,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_within)
        .keep_alive(true)
        .max_headers(MAX_PARSED_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.read_timeout)
        .keep_alive_timeout(limits.read_timeout)
        .max_pending_accept_reset_streams(20)
        .max_header_list_size(
            u32::try_from(super::middleware::MAX_HEADER_BYTES * 2).unwrap_or(u32::MAX),
        );
    builder
}

/// Waits until the connection's first bytes say which protocol it speaks, at most `limit`.
///
/// hyper-util's sniff has no timer of its own: a client that connects and sends nothing (or
/// half of the HTTP/2 preface) would otherwise hold the connection for ever. HTTP/1 is known
/// from the first byte that differs from the preface, which for every method is the first or
/// second one. `None` when the client sent nothing usable in time or went away.
async fn protocol_in_time(stream: &TcpStream, limit: Duration) -> Option<Protocol> {
    let sniff = async {
        let mut buffer = [0_u8; H2_PREFACE.len()];
        loop {
            match stream.peek(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if n == H2_PREFACE.len() && buffer == *H2_PREFACE => {
                    return Some(Protocol::Http2);
                }
                Ok(n) if buffer[..n] != H2_PREFACE[..n] => return Some(Protocol::Http1),
                // A prefix of the HTTP/2 preface: wait for more (peek would return at once).
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(limit, sniff).await.unwrap_or(None)
}
