//! The layers every request passes through, outermost first:
//!
//! 1. [`RequestContext`]: a request id (taken from `x-request-id` or generated, and returned),
//!    a tracing span with method, route, status and latency, one access-log line.
//! 2. [`ProblemErrors`]: every error — from a handler, poem's router, a payload parser or the
//!    auth check — leaves as `application/problem+json`, never as poem's plain `Display` text.
//! 3. [`HeaderLimits`]: more than [`MAX_HEADERS`] header lines or [`MAX_HEADER_BYTES`] of them
//!    get a 431. (hyper's own, higher limits answer with an empty body: see `server`.)
//! 4. [`TokenGate`]: a request under `/api/v1` without the admin token gets its 401 from the
//!    headers alone, before anything reads or waits for its body.
//! 5. [`BodyLimit`]: the body is read here, within the client read timeout and up to 1 MiB,
//!    before the request takes a concurrency slot: a slow client holds no slot. Too slow gets a
//!    408, too large a 413 (the excess is read and dropped, up to a bound, so the client reads
//!    the answer instead of a reset connection).
//! 6. [`ConcurrencyLimit`]: past a fixed number of requests in progress, new ones get a 503 at
//!    once, so a burst cannot queue without bound.
//! 7. [`Deadline`]: a request whose handling takes longer than the configured timeout gets a 503.
//!
//! `GET /health` passes only through 1 to 3 (and the security headers): a liveness probe must
//! never be shed or timed out.

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use poem::{
    Body, Endpoint, IntoResponse, Middleware, Request, Response, Result,
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::OperationId;
use tracing::Instrument;

use super::{
    auth, linger,
    problem::{Problem, RETRY_AFTER_SECS},
};
use secrecy::SecretString;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most header lines a request may have.
pub const MAX_HEADERS: usize = 100;
/// Most bytes all header names and values of a request may take together.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How much of an oversized body is drained before answering 413.
const MAX_DRAIN_BYTES: usize = 64 * 1024 * 1024;
const REQUEST_ID: &str = "x-request-id";
const PROBLEM_JSON: &str = "application/problem+json";

/// Writes `problem` as a response.
pub fn problem_response(problem: &Problem) -> Response {
    let body = serde_json::json!({
        "type": problem.kind,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    });
    let mut response = Response::builder()
        .status(StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type(PROBLEM_JSON)
        .body(body.to_string());
    if problem.status == 503 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// Request id, span and access log.
pub struct RequestContext;

impl<E: Endpoint> Middleware<E> for RequestContext {
    type Output = RequestContextEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        RequestContextEndpoint(ep)
    }
}

/// See [`RequestContext`].
pub struct RequestContextEndpoint<E>(E);

fn usable_request_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then_some(text)
}

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        // The client's id when it is usable (a cheap clone of its header), else a new one.
        let request_id = match req.headers().get(REQUEST_ID) {
            Some(value) if usable_request_id(value).is_some() => value.clone(),
            _ => {
                let mut text = uuid::Uuid::encode_buffer();
                let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
                HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("unknown"))
            }
        };
        let request_id_text = request_id.to_str().unwrap_or_default();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!(
            "http_request",
            request_id = %request_id_text,
            method = %method,
            route = tracing::field::Empty,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let in_flight = crate::metrics::request_in_flight();
        let result = self.0.call(req).instrument(span.clone()).await;
        drop(in_flight);
        let mut response = match result {
            Ok(output) => output.into_response(),
            Err(err) => error_to_problem(err),
        };
        let status = response.status().as_u16();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let route = route_of(&response, &path);
        span.record("route", route);
        span.record("status", status);
        span.record("latency_ms", latency_ms);
        crate::metrics::record_request(method.as_str(), route, status, latency_ms / 1000.0);
        span.in_scope(|| {
            if matches!(route, "health" | "health_ready" | "/metrics") {
                tracing::debug!("request completed");
            } else if status >= 500 {
                tracing::warn!("request failed");
            } else {
                tracing::info!("request completed");
            }
        });
        response.headers_mut().insert(REQUEST_ID, request_id);
        Ok(response)
    }
}

/// The route template: the OpenAPI operation, a fixed path, or "unmatched" (bounded
/// cardinality for logs and metrics).
fn route_of(response: &Response, path: &str) -> &'static str {
    if let Some(OperationId(id)) = response.data::<OperationId>() {
        return id;
    }
    match path {
        "/health" => "/health",
        "/health/ready" => "/health/ready",
        "/metrics" => "/metrics",
        "/docs" | "/docs/" => "/docs",
        "/openapi.json" => "/openapi.json",
        _ => "unmatched",
    }
}

/// Turns every error into problem+json.
pub struct ProblemErrors;

impl<E: Endpoint> Middleware<E> for ProblemErrors {
    type Output = ProblemErrorsEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        ProblemErrorsEndpoint(ep)
    }
}

/// See [`ProblemErrors`].
pub struct ProblemErrorsEndpoint<E>(E);

impl<E: Endpoint> Endpoint for ProblemErrorsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let response = match self.0.call(req).await {
            Ok(output) => output.into_response(),
            Err(err) => return Ok(error_to_problem(err)),
        };
        // A documented JSON answer (readiness's 503) stays; poem's plain-text errors do not.
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if response.status().as_u16() >= 400 && !is_problem(&response) && !is_json {
            let status = response.status().as_u16();
            return Ok(problem_response(&Problem::new(
                status,
                default_detail(status),
            )));
        }
        Ok(response)
    }
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

/// The problem answer for an error that escaped a handler.
pub fn error_to_problem(err: poem::Error) -> Response {
    let status = err.status();
    let code = status.as_u16();
    let text = err.to_string();
    // Errors raised by our handlers already carry their problem body: keep it.
    let response = err.into_response();
    if is_problem(&response) {
        return response;
    }
    let detail = if code == 401 {
        "a valid `Authorization: Bearer <token>` header is required".to_owned()
    } else if code == 400 || code == 422 {
        // Parser messages describe the client's own input (field names, expected types), but
        // never quote a value: it may be a secret sent in the wrong shape.
        let mut detail: String = without_received_value(&text).chars().take(300).collect();
        if detail.is_empty() {
            detail = default_detail(code).to_owned();
        }
        detail
    } else if code >= 500 {
        tracing::error!(error = %text, "unhandled error");
        default_detail(code).to_owned()
    } else {
        default_detail(code).to_owned()
    };
    let code = if code == 422 { 400 } else { code };
    let mut response = problem_response(&Problem::new(code, detail));
    if code == 401 {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// poem-openapi's type errors quote the JSON value received (`Expected input type "string",
/// found ["…"]. (occurred while parsing "CreateTenant")`); this keeps the message without it.
/// The value is JSON, where a `"` inside a string is escaped, so the first
/// `. (occurred while parsing "` is the parser's own.
fn without_received_value(text: &str) -> Cow<'_, str> {
    const FOUND: &str = ", found ";
    const CONTEXT: &str = ". (occurred while parsing \"";
    let Some(at) = text.find(FOUND) else {
        return Cow::Borrowed(text);
    };
    let rest = &text[at + FOUND.len()..];
    let context = rest.find(CONTEXT).map_or(".", |i| &rest[i..]);
    Cow::Owned(format!(
        "{}, found a value of another type{context}",
        &text[..at]
    ))
}

fn default_detail(status: u16) -> &'static str {
    match status {
        400 => "the request is malformed",
        401 => "a valid `Authorization: Bearer <token>` header is required",
        404 => "no such resource",
        405 => "method not allowed on this resource",
        406 => "the requested media type cannot be produced",
        408 => "the request was not received in time",
        411 => "a Content-Length or chunked body is required",
        413 => "the request body is larger than 1 MiB",
        431 => "the request headers are too many or too large",
        415 => "the body must be application/json",
        503 => "a dependency is unavailable, retry later",
        _ if status >= 500 => "an unexpected error occurred",
        _ => "the request cannot be served",
    }
}

/// Per-request deadline.
pub struct Deadline(pub Duration);

impl<E: Endpoint> Middleware<E> for Deadline {
    type Output = DeadlineEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        DeadlineEndpoint(ep, self.0)
    }
}

/// See [`Deadline`].
pub struct DeadlineEndpoint<E>(E, Duration);

impl<E: Endpoint> Endpoint for DeadlineEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        match tokio::time::timeout(self.1, self.0.call(req)).await {
            Ok(result) => result.map(IntoResponse::into_response),
            Err(_) => {
                tracing::warn!("request exceeded its deadline");
                Ok(problem_response(&Problem::new(
                    503,
                    "the request took too long, retry later",
                )))
            }
        }
    }
}

/// Caps the requests served at once; the excess is shed with a 503 at once.
pub struct ConcurrencyLimit(std::sync::Arc<tokio::sync::Semaphore>);

impl ConcurrencyLimit {
    /// At most `max` requests at once.
    pub fn new(max: usize) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(max)))
    }
}

impl<E: Endpoint> Middleware<E> for ConcurrencyLimit {
    type Output = ConcurrencyLimitEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        ConcurrencyLimitEndpoint(ep, std::sync::Arc::clone(&self.0))
    }
}

/// See [`ConcurrencyLimit`].
pub struct ConcurrencyLimitEndpoint<E>(E, std::sync::Arc<tokio::sync::Semaphore>);

impl<E: Endpoint> Endpoint for ConcurrencyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let Ok(_permit) = self.1.try_acquire() else {
            return Ok(problem_response(&Problem::new(
                503,
                "the server is busy, retry later",
            )));
        };
        self.0.call(req).await.map(IntoResponse::into_response)
    }
}

/// Caps request bodies at [`MAX_BODY_BYTES`] and the time to send them at the client read
/// timeout, reading them whole before the layers inside see the request.
pub struct BodyLimit {
    /// Time a client has to send the whole body.
    pub read_timeout: Duration,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint(ep, self.read_timeout)
    }
}

/// See [`BodyLimit`].
pub struct BodyLimitEndpoint<E>(E, Duration);

/// An answer after which the connection closes: the rest of the request was not read.
fn closing(status: u16, detail: &str) -> Response {
    let mut response = problem_response(&Problem::new(status, detail));
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large() -> Response {
    closing(413, default_detail(413))
}

/// Why a body could not be taken.
enum BodyRefused {
    TooLarge,
    TooSlow,
    CutOff,
}

/// Reads the whole body of `req` within `limit`; the body, or why not.
async fn read_body(
    req: &mut Request,
    declared: Option<usize>,
    limit: Duration,
) -> Result<Vec<u8>, BodyRefused> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut stream = req.take_body().into_bytes_stream();
    let mut buffer = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    let mut seen = 0_usize;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(BodyRefused::TooSlow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyRefused::CutOff),
            Ok(Some(Ok(chunk))) => chunk,
        };
        seen += chunk.len();
        if seen > MAX_DRAIN_BYTES {
            return Err(BodyRefused::TooLarge);
        }
        if seen <= MAX_BODY_BYTES {
            buffer.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(BodyRefused::TooLarge);
    }
    Ok(buffer)
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // In HTTP/1.x, no length and no transfer coding means no body at all (RFC 9112 §6.3):
        // nothing to read, so the request goes on untouched (most GETs). HTTP/2 bodies need
        // no length, so they are always counted.
        let http1 = matches!(
            req.version(),
            poem::http::Version::HTTP_10 | poem::http::Version::HTTP_11
        );
        let bodiless =
            http1 && declared.is_none() && !req.headers().contains_key(header::TRANSFER_ENCODING);
        if declared == Some(0) || bodiless {
            return self.0.call(req).await.map(IntoResponse::into_response);
        }
        if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
            linger::arm(&req);
            return Ok(too_large());
        }
        match read_body(&mut req, declared, self.1).await {
            Ok(body) => {
                req.set_body(Body::from(body));
                self.0.call(req).await.map(IntoResponse::into_response)
            }
            Err(BodyRefused::TooLarge) => {
                linger::arm(&req);
                Ok(too_large())
            }
            Err(BodyRefused::TooSlow) => {
                tracing::info!("request body not received within the client read timeout");
                Ok(closing(408, "the request body was not received in time"))
            }
            Err(BodyRefused::CutOff) => Ok(problem_response(&Problem::new(
                400,
                "the request body was cut off",
            ))),
        }
    }
}

/// Answers 401 to `/api/v1` requests without the admin token, from the headers alone.
pub struct TokenGate(pub SecretString);

impl<E: Endpoint> Middleware<E> for TokenGate {
    type Output = TokenGateEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        TokenGateEndpoint(ep, self.0.clone())
    }
}

/// See [`TokenGate`].
pub struct TokenGateEndpoint<E>(E, SecretString);

/// Whether `path` is under the authenticated API.
fn needs_token(path: &str) -> bool {
    path == "/api/v1" || path.starts_with("/api/v1/")
}

impl<E: Endpoint> Endpoint for TokenGateEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        if needs_token(req.uri().path()) {
            let authorised = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::bearer_token)
                .is_some_and(|token| auth::token_matches(token, &self.1));
            if !authorised {
                // The body stays unread; hyper then closes the connection after this answer
                // instead of waiting for the rest, lingering so the client reads the answer.
                let body_follows = req.headers().contains_key(header::TRANSFER_ENCODING)
                    || req
                        .headers()
                        .get(header::CONTENT_LENGTH)
                        .is_some_and(|n| n.as_bytes() != b"0");
                if body_follows {
                    linger::arm(&req);
                }
                let mut response = closing(401, default_detail(401));
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Ok(response);
            }
        }
        self.0.call(req).await.map(IntoResponse::into_response)
    }
}

/// Answers 431 to requests with more than [`MAX_HEADERS`] header lines or more than
/// [`MAX_HEADER_BYTES`] of them.
pub struct HeaderLimits;

impl<E: Endpoint> Middleware<E> for HeaderLimits {
    type Output = HeaderLimitsEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        HeaderLimitsEndpoint(ep)
    }
}

/// See [`HeaderLimits`].
pub struct HeaderLimitsEndpoint<E>(E);

impl<E: Endpoint> Endpoint for HeaderLimitsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let headers = req.headers();
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
            return Ok(closing(431, default_detail(431)));
        }
        self.0.call(req).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::without_received_value;

    #[test]
    fn a_received_value_is_left_out_of_parser_messages() {
        let nested = r#"Expected input type "string", found ["sk-1. (occurred while parsing \"X\")"]. (occurred while parsing "CreateTenant")"#;
        assert_eq!(
            without_received_value(nested),
            r#"Expected input type "string", found a value of another type. (occurred while parsing "CreateTenant")"#
        );
        assert_eq!(
            without_received_value(r#"Expected input type "integer", found "sk-2"."#),
            r#"Expected input type "integer", found a value of another type."#
        );
        let plain = "parse error: missing field `name`";
        assert_eq!(without_received_value(plain), plain);
    }
}
