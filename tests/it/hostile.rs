//! The API under hostile clients and stuck dependencies (contract section 9), against the real
//! `ai-agents-api` binary, PostgreSQL and Redis, on 127.0.0.1 with bounded loads. Each test
//! prints the figure the contract promises something about.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ai_agents::queue::Queue;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    ApiProcess, Outage, OwnRedis, TEST_TOKEN, TestDb, assert_problem, closed_port, content_type,
    eventually, host_port, queue_prefix, redis_pool, redis_url, terminate_sessions, test_vars, via,
    worker::Worker,
};

/// Variables of an API on a fresh database, with `extra` on top.
async fn api_vars(extra: &[(&str, &str)]) -> (TestDb, HashMap<String, String>) {
    let db = TestDb::new().await;
    let mut vars = test_vars(&db.app_url, &redis_url(), &queue_prefix());
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    (db, vars)
}

fn authorised(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
) -> reqwest::RequestBuilder {
    client.request(method, url).bearer_auth(TEST_TOKEN)
}

/// Reads what the server sends until it closes the connection or `limit` passes; the bytes
/// read, and when the connection was closed (`None`: still open at the limit).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return (received, None),
            Ok(Ok(0) | Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// An authorised `GET /api/v1/queue/stats`: status and latency.
async fn timed_stats(api: &ApiProcess) -> (u16, Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = authorised(
        &client,
        reqwest::Method::GET,
        api.url("/api/v1/queue/stats"),
    )
    .send()
    .await
    .expect("request");
    (response.status().as_u16(), started.elapsed())
}

/// Opens `n` connections that send the head of a POST with a 10-byte body, and never the body.
async fn slow_bodies(addr: SocketAddr, n: usize, token: Option<&str>) -> Vec<TcpStream> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST /api/v1/enhancements HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    );
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("send head");
        streams.push(stream);
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_slow_bodies_do_not_delay_an_authorised_request() {
    // Both ends of every connection live on this machine: make room for them here too. Where
    // the hard limit is too low for 1,100 (a build sandbox), as many as fit, said loudly.
    let limits = ai_agents::os::raise_open_files_limit().expect("getrlimit");
    let fit = usize::try_from(limits.soft.saturating_sub(300) / 2).unwrap_or(usize::MAX);
    let clients = fit.min(1_100);
    if clients < 1_100 {
        eprintln!(
            "open-files limit {}: {clients} slow clients instead of 1,100",
            limits.soft
        );
    }
    let (_db, vars) = api_vars(&[]).await;
    let api = ApiProcess::start(vars).await;

    // Without a token: each is answered 401 from its headers, its body never awaited.
    let mut anonymous = slow_bodies(api.addr, clients, None).await;
    for stream in anonymous.iter_mut().take(20) {
        let (answer, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(closed.is_some(), "the connection is closed after the 401");
    }
    let (status, latency) = timed_stats(&api).await;
    println!(
        "{clients} slow-body clients without a token open: authorised GET /api/v1/queue/stats {status} in {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert_eq!(status, 200);
    assert!(latency < Duration::from_secs(2), "{latency:?}");

    // With the token: they wait for their bodies, but hold no concurrency slot meanwhile.
    let _authorised = slow_bodies(api.addr, clients, Some(TEST_TOKEN)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, latency) = timed_stats(&api).await;
    println!(
        "{clients} slow-body clients with the token open: authorised GET /api/v1/queue/stats {status} in {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert_eq!(
        status, 200,
        "a waiting body must not hold a concurrency slot"
    );
    assert!(latency < Duration::from_secs(2), "{latency:?}");
}

/// After `silence`, sends `first`, then `each` every 300 ms until the server closes the
/// connection or `limit` passes; the answer and when the connection was closed (both times
/// counted from the connect).
async fn trickle(
    addr: SocketAddr,
    silence: Duration,
    first: String,
    each: &'static str,
    limit: Duration,
) -> (String, Option<Duration>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        tokio::time::sleep(silence).await;
        if writer.write_all(first.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if each.is_empty() || writer.write_all(each.as_bytes()).await.is_err() {
                if each.is_empty() {
                    // Keep the write half open, sending nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                return;
            }
        }
    });
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    let closed = loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, reader.read(&mut buffer)).await {
            Err(_) => break None,
            Ok(Ok(0) | Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    };
    writing.abort();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// Prints when the connection of `what` closed (`None`: still open after `limit`) and checks
/// that it was after about the read timeout of 2 s, not before it and not long after.
fn closed_after_the_read_timeout(what: &str, closed: Option<Duration>, limit: Duration) {
    println!(
        "read timeout 2 s, {what}: connection closed after {}",
        closed.map_or("(still open)".to_owned(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );
    let closed = closed.unwrap_or_else(|| panic!("{what}: still connected after {limit:?}"));
    assert!(
        closed >= Duration::from_millis(1500),
        "{what}: closed early ({closed:?})"
    );
    assert!(
        closed < Duration::from_millis(3000),
        "{what}: closed late ({closed:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trickling_clients_are_cut_off_after_the_read_timeout() {
    let (_db, vars) = api_vars(&[("AI_AGENTS_CLIENT_READ_TIMEOUT_SECS", "2")]).await;
    let api = ApiProcess::start(vars).await;
    let limit = Duration::from_secs(8);
    let body_head = format!(
        "POST /api/v1/enhancements HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let now = Duration::ZERO;
    let head = || "GET /health HTTP/1.1\r\n".to_owned();
    let (headers, late_headers, body, silent, preface) = tokio::join!(
        trickle(api.addr, now, head(), "X-Trickle: 1\r\n", limit),
        // The head's time counts from the connect, not from the first byte.
        trickle(
            api.addr,
            Duration::from_millis(1500),
            head(),
            "X-Trickle: 1\r\n",
            limit
        ),
        trickle(api.addr, now, body_head, " ", limit),
        trickle(api.addr, now, String::new(), "", limit),
        trickle(api.addr, now, "PRI * HTTP/2.0\r\n".to_owned(), "", limit),
    );
    for (what, (answer, closed)) in [
        ("a header line every 300 ms", &headers),
        (
            "its first byte after 1.5 s, then a header line every 300 ms",
            &late_headers,
        ),
        ("a body byte every 300 ms, with the token", &body),
        ("nothing at all", &silent),
        ("half an HTTP/2 preface", &preface),
    ] {
        closed_after_the_read_timeout(&format!("client sending {what}"), *closed, limit);
        assert!(!answer.starts_with("HTTP/1.1 2"), "{what}: {answer}");
    }
    // Where an answer can still be written, it is a problem+json 408.
    assert!(body.0.starts_with("HTTP/1.1 408"), "{}", body.0);
    assert!(body.0.contains("application/problem+json"), "{}", body.0);
}

/// HTTP/2 has no head timer in hyper, and its keep-alive pings end only a client that does not
/// answer them. A client whose library answers them but sends no request, and one stuck in the
/// middle of a header frame, are closed once the connection has had no request in progress for
/// the read timeout, counted from the accept; a client that keeps sending requests, or is still
/// receiving an answer, keeps its connection.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_trickling_http2_connections_are_closed_after_the_read_timeout() {
    let (_db, vars) = api_vars(&[("AI_AGENTS_CLIENT_READ_TIMEOUT_SECS", "2")]).await;
    let api = ApiProcess::start(vars).await;
    let limit = Duration::from_secs(8);
    let health = || {
        http::Request::get(format!("http://{}/health", api.addr))
            .body(())
            .expect("request")
    };
    let connect = || async {
        let tcp = TcpStream::connect(api.addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        (client, tokio::spawn(connection))
    };
    // One request, then nothing; the client library answers the server's pings.
    let idle = async {
        let (client, connection) = connect().await;
        let mut client = client.ready().await.expect("ready");
        let (response, _) = client.send_request(health(), true).expect("sent");
        assert_eq!(response.await.expect("answered").status(), 200);
        let answered = Instant::now();
        let closed = tokio::time::timeout(limit, connection).await.is_ok();
        closed.then(|| answered.elapsed())
    };
    // A request every 500 ms for 5 s.
    let busy = async {
        let (mut client, connection) = connect().await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            client = client.ready().await.expect("still open");
            let (response, _) = client.send_request(health(), true).expect("sent");
            assert_eq!(response.await.expect("answered").status(), 200);
        }
        !connection.is_finished()
    };
    // A large answer (the docs page, over a megabyte) read only after 3 s: the connection
    // window fills, and the answer is in progress until it has all been sent.
    let slow_reader = async {
        let (client, _connection) = connect().await;
        let mut client = client.ready().await.expect("ready");
        let docs = http::Request::get(format!("http://{}/docs", api.addr))
            .body(())
            .expect("request");
        let (response, _) = client.send_request(docs, true).expect("sent");
        let mut body = response.await.expect("answered").into_body();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("the whole answer");
            received += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        received
    };
    // A header frame announced, its bytes sent one every 300 ms (so no ping can be answered).
    let frames = format!(
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{}{}",
        "\0\0\0\u{4}\0\0\0\0\0",      // SETTINGS, empty
        "\0\0d\u{1}\u{5}\0\0\0\u{1}"  // HEADERS of 100 bytes, stream 1, END_HEADERS|END_STREAM
    );
    let trickling = trickle(api.addr, Duration::ZERO, frames.clone(), "a", limit);
    // The preface and settings after 1.5 s, then nothing: the idle time counts from the accept.
    let late = trickle(api.addr, Duration::from_millis(1500), frames, "", limit);
    let (idle, busy, slow_reader, (_, trickling), (_, late)) =
        tokio::join!(idle, busy, slow_reader, trickling, late);
    for (what, closed) in [
        ("idle after one request, answering pings", idle),
        ("trickling a header frame", trickling),
        ("sending its preface after 1.5 s, then nothing", late),
    ] {
        closed_after_the_read_timeout(&format!("HTTP/2, client {what}"), closed, limit);
    }
    println!("HTTP/2, a request every 500 ms for 5 s: connection kept: {busy}");
    assert!(busy, "a busy HTTP/2 connection was closed");
    println!("HTTP/2, the docs page read after 3 s: {slow_reader} bytes received");
    assert!(slow_reader > 1_000_000, "{slow_reader} bytes");
}

/// Sends `head`, then `body_bytes` bytes of body in 1 MiB pieces, all before reading (as most
/// clients do), then reads the answer: what was received, and the first error on either side.
async fn send_all_then_read(
    addr: SocketAddr,
    head: String,
    body_bytes: usize,
) -> (String, Option<std::io::Error>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let piece = vec![b'a'; 1024 * 1024];
    let mut failed = stream.write_all(head.as_bytes()).await.err();
    let mut sent = 0;
    while failed.is_none() && sent < body_bytes {
        let n = piece.len().min(body_bytes - sent);
        failed = stream.write_all(&piece[..n]).await.err();
        sent += n;
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut received));
    let failed = match read.await {
        Ok(Ok(_)) => failed,
        Ok(Err(e)) => failed.or(Some(e)),
        Err(_) => failed.or(Some(std::io::ErrorKind::TimedOut.into())),
    };
    (String::from_utf8_lossy(&received).into_owned(), failed)
}

/// Answers given before the body is read (a 413 to a body declared larger than the API reads at
/// all, a 401 to a body sent without the token) reach a client that sends its whole body before
/// reading: the connection closes after the client is done, not with a reset.
#[tokio::test(flavor = "multi_thread")]
async fn answers_given_before_the_body_reach_a_client_that_sends_it_all_first() {
    let (_db, vars) = api_vars(&[]).await;
    let api = ApiProcess::start(vars).await;
    let head = |length: usize, token: &str| {
        format!(
            "POST /api/v1/tenants HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    let too_large = 96 * 1024 * 1024;
    let without_token = 16 * 1024 * 1024;
    for (what, head, length, status) in [
        (
            "96 MiB declared",
            head(too_large, TEST_TOKEN),
            too_large,
            "413",
        ),
        (
            "16 MiB without the token",
            head(without_token, "wrong"),
            without_token,
            "401",
        ),
    ] {
        let started = Instant::now();
        let (answer, failed) = send_all_then_read(api.addr, head, length).await;
        let status_line = answer.lines().next().unwrap_or_default();
        println!(
            "{what}, the whole body sent before reading: {status_line:?}, error: {failed:?}, {:.2} s",
            started.elapsed().as_secs_f64()
        );
        assert!(failed.is_none(), "{what}: {failed:?}, answer {answer:?}");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
        assert!(
            answer.contains("application/problem+json"),
            "{what}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_row_holds_up_only_its_own_tenant() {
    let (db, vars) = api_vars(&[("AI_AGENTS_DATABASE_POOL_SIZE", "10")]).await;
    let api = ApiProcess::start(vars).await;
    let client = reqwest::Client::new();
    api.create_tenant("a").await;
    api.create_tenant("b").await;

    // Another session locks tenant a's row and keeps its transaction open.
    let mut locker = PgConnection::connect(&db.app_url).await.expect("connect");
    locker.execute("BEGIN").await.expect("begin");
    locker
        .execute("SELECT set_config('app.current_tenant_id', 'a', true)")
        .await
        .expect("scope");
    locker
        .execute("SELECT 1 FROM tenant_configs WHERE tenant_id = 'a' FOR UPDATE")
        .await
        .expect("lock");

    let patches: Vec<_> = (0..40)
        .map(|i| {
            let request = authorised(
                &client,
                reqwest::Method::PATCH,
                api.url("/api/v1/tenants/a"),
            )
            .json(&json!({"name": format!("rename {i}")}));
            tokio::spawn(async move {
                let response = request.send().await.expect("request");
                (response.status().as_u16(), content_type(&response))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let other = authorised(&client, reqwest::Method::GET, api.url("/api/v1/tenants/b"))
        .send()
        .await
        .expect("request");
    let other_latency = started.elapsed();
    let ready = client
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("request");
    let ready_status = ready.status().as_u16();
    let ready_body: Value = ready.json().await.expect("json");
    println!(
        "tenant a's row locked, 40 PATCHes of a waiting: GET /api/v1/tenants/b {} in {:.1} ms; /health/ready {ready_status} {ready_body}",
        other.status(),
        other_latency.as_secs_f64() * 1000.0
    );
    assert_eq!(other.status(), 200);
    assert!(
        other_latency < Duration::from_millis(1500),
        "{other_latency:?}"
    );
    assert_eq!(
        ready_status, 200,
        "a busy pool is not an outage: {ready_body}"
    );

    let mut counts: HashMap<u16, usize> = HashMap::new();
    for patch in patches {
        let (status, content_type) = patch.await.expect("task");
        assert!(
            matches!(status, 409 | 503),
            "a PATCH stuck behind the lock gives up with 409 or 503, not {status}"
        );
        assert!(content_type.starts_with("application/problem+json"));
        *counts.entry(status).or_default() += 1;
    }
    println!("the 40 PATCHes of tenant a: {counts:?}");

    locker.execute("ROLLBACK").await.expect("release");
    let after = authorised(
        &client,
        reqwest::Method::PATCH,
        api.url("/api/v1/tenants/a"),
    )
    .json(&json!({"name": "renamed"}))
    .send()
    .await
    .expect("request");
    assert_eq!(after.status(), 200, "served again once the lock is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_requests_after_a_redis_restart_succeed() {
    let mut redis = OwnRedis::start().await;
    let db = TestDb::new().await;
    let mut vars = test_vars(&db.app_url, &redis.url(), &queue_prefix());
    vars.insert("AI_AGENTS_REDIS_MAX_CONNECTIONS".into(), "10".into());
    let api = ApiProcess::start(vars).await;
    let client = reqwest::Client::new();
    api.create_tenant("acme").await;
    let post = || {
        authorised(
            &client,
            reqwest::Method::POST,
            api.url("/api/v1/enhancements"),
        )
        .json(&json!({"tenant_id": "acme", "ticket_id": "INC-1"}))
        .send()
    };
    // Every pooled connection used at least once.
    for _ in 0..20 {
        assert_eq!(post().await.expect("request").status(), 202);
    }

    redis.restart().await;
    let mut failed = 0;
    for _ in 0..20 {
        if post().await.expect("request").status() != 202 {
            failed += 1;
        }
    }
    let ready = client
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("request");
    println!(
        "after a Redis restart: {failed} of 20 POSTs failed; /health/ready {}",
        ready.status()
    );
    assert_eq!(
        failed, 0,
        "stale pooled connections were handed to requests"
    );
    assert_eq!(ready.status(), 200);
}

/// The same after PostgreSQL goes away and comes back (every pooled connection cut, as a
/// restart does, through a relay in front of the shared server): the pool replaces the dead
/// connections instead of handing them to requests, and the readiness probe its own.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_requests_after_a_postgres_restart_succeed() {
    let db = TestDb::new().await;
    let relay = Outage::relay(&host_port(&db.app_url)).await;
    let mut vars = test_vars(&via(&db.app_url, relay.addr), &redis_url(), &queue_prefix());
    vars.insert("AI_AGENTS_DATABASE_POOL_SIZE".into(), "10".into());
    let api = ApiProcess::start(vars).await;
    let client = reqwest::Client::new();
    api.create_tenant("acme").await;
    let post = || {
        authorised(
            &client,
            reqwest::Method::POST,
            api.url("/api/v1/enhancements"),
        )
        .json(&json!({"tenant_id": "acme", "ticket_id": "INC-1"}))
        .send()
    };
    // Every pooled connection opened: 20 requests at once on a pool of 10; and the readiness
    // probe's connection of its own.
    let warm = futures_util::future::join_all((0..20).map(|_| post())).await;
    assert!(
        warm.into_iter()
            .all(|r| r.expect("request").status() == 202)
    );
    let ready_before = client
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready_before.status(), 200);

    relay.down();
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.up();
    let mut failed = 0;
    for _ in 0..20 {
        if post().await.expect("request").status() != 202 {
            failed += 1;
        }
    }
    let ready = client
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("request");
    println!(
        "after a PostgreSQL restart: {failed} of 20 POSTs failed; /health/ready {}",
        ready.status()
    );
    assert_eq!(
        failed, 0,
        "stale pooled connections were handed to requests"
    );
    assert_eq!(ready.status(), 200);
}

/// Connections ended by the server while the API keeps using them (`pg_terminate_backend`, as
/// an operator, a pooler or a failover manager does), under load: a connection back in the
/// pool for a moment is handed out again without a ping, so the first statement on it is the
/// first to learn that it is gone. That statement is the transaction's `BEGIN`, which is safe to
/// send again on another connection: requests sent after the sessions ended must not fail for
/// it (those under way at that moment may). Three rounds, as one is not always hit.
#[tokio::test(flavor = "multi_thread")]
async fn requests_right_after_their_connections_are_terminated_succeed() {
    let db = TestDb::new().await;
    let mut vars = test_vars(&db.app_url, &redis_url(), &queue_prefix());
    vars.insert("AI_AGENTS_DATABASE_POOL_SIZE".into(), "4".into());
    let api = Arc::new(ApiProcess::start(vars).await);
    api.create_tenant("acme").await;
    let stop = CancellationToken::new();
    // Two lanes on a pool of four: connections come back and go out again within
    // milliseconds, some of them before the pool would ping them.
    let lanes: Vec<_> = (0..2)
        .map(|lane| {
            let (api, stop) = (Arc::clone(&api), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                for n in 0.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let sent = Instant::now();
                    let response = post_for_acme(&client, &api, format!("KILL-{lane}-{n}")).await;
                    let status = response.map_or(0, |r| r.status().as_u16());
                    answers.push((sent, Instant::now(), status));
                }
                answers
            })
        })
        .collect();
    let mut kills = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (killed, began, ended) = terminate_sessions(&db.app_url).await;
        kills.push((began, ended, killed));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.cancel();
    let first_kill = kills[0].1;
    let (mut after, mut under_way) = (Vec::new(), 0);
    for lane in lanes {
        for (sent, answered, status) in lane.await.expect("lane") {
            if kills
                .iter()
                .any(|(began, ended, _)| sent < *ended && answered > *began)
            {
                under_way += 1;
            } else if sent >= first_kill {
                after.push(status);
            }
        }
    }
    let killed: Vec<i64> = kills.iter().map(|(_, _, n)| *n).collect();
    let failed: Vec<u16> = after.iter().copied().filter(|s| *s != 202).collect();
    println!(
        "sessions terminated in three rounds under load: {killed:?}; {} POSTs sent after the \
         first (not under way at a round), failed: {failed:?}; {under_way} under way at a round",
        after.len()
    );
    assert!(
        killed.iter().all(|n| *n >= 2),
        "the lanes' connections were open"
    );
    assert!(after.len() >= 20, "the lanes went on: {}", after.len());
    assert!(failed.is_empty(), "{failed:?}");
}

/// An API on a fresh database reached through a relay (pool of 4, request deadline 3 s,
/// statement timeout `statement_timeout_ms`, lock timeout half that), with tenant `acme`.
async fn api_behind_a_relay(statement_timeout_ms: u64) -> (TestDb, Outage, ApiProcess) {
    let db = TestDb::new().await;
    let relay = Outage::relay(&host_port(&db.app_url)).await;
    let mut vars = test_vars(&via(&db.app_url, relay.addr), &redis_url(), &queue_prefix());
    for (name, value) in [
        ("AI_AGENTS_DATABASE_POOL_SIZE", 4),
        ("AI_AGENTS_REQUEST_TIMEOUT_SECS", 3),
        (
            "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS",
            statement_timeout_ms,
        ),
        (
            "AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS",
            statement_timeout_ms / 2,
        ),
    ] {
        vars.insert(name.into(), value.to_string());
    }
    let api = ApiProcess::start(vars).await;
    api.create_tenant("acme").await;
    (db, relay, api)
}

/// `POST /api/v1/enhancements` of `ticket` for tenant `acme`.
fn post_for_acme(
    client: &reqwest::Client,
    api: &ApiProcess,
    ticket: String,
) -> impl Future<Output = reqwest::Result<reqwest::Response>> {
    authorised(
        client,
        reqwest::Method::POST,
        api.url("/api/v1/enhancements"),
    )
    .json(&json!({"tenant_id": "acme", "ticket_id": ticket}))
    .send()
}

/// `AI_AGENTS_DATABASE_POOL_SIZE` is the most connections the API holds, its readiness probe's
/// own included: under bursts of requests and probes, PostgreSQL never has more sessions of the
/// application role open for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_size_bounds_every_connection_of_the_api() {
    let (db, vars) = api_vars(&[("AI_AGENTS_DATABASE_POOL_SIZE", "3")]).await;
    let api = ApiProcess::start(vars).await;
    api.create_tenant("acme").await;
    let client = reqwest::Client::new();
    let mut counter = PgConnection::connect(&db.app_url).await.expect("connect");
    let mut most = 0_i64;
    let mut answered = Vec::new();
    for round in 0..20 {
        let posts = (0..24).map(|i| post_for_acme(&client, &api, format!("pool-{round}-{i}")));
        let probes = (0..4).map(|_| client.get(api.url("/health/ready")).send());
        let load = async {
            let (posts, probes) = tokio::join!(
                futures_util::future::join_all(posts),
                futures_util::future::join_all(probes)
            );
            posts
                .into_iter()
                .chain(probes)
                .map(|r| r.map(|r| r.status().as_u16()))
                .collect::<Vec<_>>()
        };
        let sample = async {
            let mut most = 0_i64;
            for _ in 0..10 {
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user
                       AND datname = current_database() AND pid <> pg_backend_pid()",
                )
                .fetch_one(&mut counter)
                .await
                .expect("count");
                most = most.max(open);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        };
        let (statuses, sampled) = tokio::join!(load, sample);
        most = most.max(sampled);
        answered.extend(statuses);
    }
    let ok = answered
        .iter()
        .filter(|s| matches!(s, Ok(200 | 202)))
        .count();
    println!(
        "pool size 3: at most {most} sessions of the API seen; {ok} of {} requests and probes answered 200/202",
        answered.len()
    );
    assert!(most >= 2, "the load never used the pool ({most})");
    assert!(most <= 3, "{most} sessions for a pool size of 3");
}

/// PostgreSQL frozen (stopped with SIGSTOP, as the API sees it: connections open, nothing
/// answered). A frozen server cannot enforce its own `statement_timeout`, so only the request
/// deadline bounds the requests: each ends by it with a problem+json 503, also those waiting
/// for a pooled connection, while liveness answers at once. Once PostgreSQL thaws, with the
/// abandoned statements' answers still arriving on the pooled connections, the first requests
/// succeed.
#[tokio::test]
async fn requests_while_postgres_is_frozen_end_by_their_deadline_then_succeed() {
    let (_db, relay, api) = api_behind_a_relay(2000).await;
    let client = reqwest::Client::new();
    let post = |ticket: String| post_for_acme(&client, &api, ticket);

    relay.freeze();
    let started = Instant::now();
    // Twice the pool: four wait inside PostgreSQL, four for a connection.
    let frozen = futures_util::future::join_all((0..8).map(|i| async move {
        let response = tokio::time::timeout(Duration::from_secs(10), post(format!("INC-F{i}")))
            .await
            .expect("no answer 10 s into a frozen PostgreSQL")
            .expect("request");
        (started.elapsed(), response)
    }))
    .await;
    let live_started = Instant::now();
    let live = client
        .get(api.url("/health"))
        .send()
        .await
        .expect("request");
    let live_took = live_started.elapsed();
    let slowest = frozen.iter().map(|(took, _)| *took).max().unwrap();
    println!(
        "PostgreSQL frozen: 8 POSTs answered {:?} within {slowest:.2?} (deadline 3 s); /health {} in {live_took:.2?}",
        frozen
            .iter()
            .map(|(_, r)| r.status().as_u16())
            .collect::<Vec<_>>(),
        live.status(),
    );
    for (_, response) in frozen {
        assert_problem(response, 503).await;
    }
    assert!(
        slowest < Duration::from_secs(5),
        "a request outlived its 3 s deadline by far: {slowest:?}"
    );
    assert_eq!(live.status(), 200);

    relay.thaw();
    let mut failed = Vec::new();
    for i in 0..20 {
        let status = post(format!("INC-T{i}")).await.expect("request").status();
        if status != 202 {
            failed.push(status.as_u16());
        }
    }
    println!(
        "after the thaw: {} of 20 POSTs failed {failed:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed after the thaw: {failed:?}"
    );
}

/// PostgreSQL fails over under load: every connection the API has open goes silent for good
/// (the old server neither answers nor resets it), while new connections reach a live server.
/// The requests caught on the old connections end by their deadline; sqlx's check of each
/// connection returning to the pool would wait for those connections for as long as the kernel
/// keeps them, and with every pooled connection stuck so, no later request would get one. The
/// pool's own bounded check closes them instead, and requests succeed again within seconds.
#[tokio::test]
async fn requests_after_a_postgres_failover_succeed_within_seconds() {
    let (_db, relay, api) = api_behind_a_relay(1000).await;
    let client = reqwest::Client::new();
    let post = |ticket: String| post_for_acme(&client, &api, ticket);

    // Twice the pool, posting without a pause, before the failover and for a second after it:
    // the pooled connections are in use when it comes, and requests go on using them. The
    // readiness probe is asked all along as well, by four clients at once, so that its one
    // connection of its own is busy when the failover comes.
    let stop = CancellationToken::new();
    let probing = futures_util::future::join_all((0..4).map(|_| async {
        while !stop.is_cancelled() {
            let _ = client.get(api.url("/health/ready")).send().await;
        }
    }));
    let load = futures_util::future::join_all((0..8).map(|lane| {
        let stop = stop.clone();
        async move {
            let mut statuses = Vec::new();
            for i in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let response = post(format!("INC-L{lane}-{i}")).await.expect("request");
                statuses.push(response.status().as_u16());
            }
            statuses
        }
    }));
    let failover = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        relay.strand();
        let stranded = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        stranded
    };
    let (statuses, stranded, _) = tokio::join!(load, failover, probing);
    let statuses: Vec<u16> = statuses.into_iter().flatten().collect();
    let caught = statuses.iter().filter(|s| **s != 202).count();

    // From the failover on, the first success, then twenty in a row.
    let mut first_success = None;
    while stranded.elapsed() < Duration::from_secs(20) {
        if post(format!("INC-F{}", stranded.elapsed().as_millis()))
            .await
            .expect("request")
            .status()
            == 202
        {
            first_success = Some(stranded.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failed = Vec::new();
    for i in 0..20 {
        let status = post(format!("INC-A{i}")).await.expect("request").status();
        if status != 202 {
            failed.push(status.as_u16());
        }
    }
    let ready_again = eventually(Duration::from_secs(10), || async {
        client
            .get(api.url("/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    println!(
        "PostgreSQL failover under load: {} POSTs, {caught} caught by it; first success \
         {first_success:.2?} after it; then {} of 20 POSTs failed; ready again: {ready_again} \
         ({:.1?} after it)",
        statuses.len(),
        failed.len(),
        stranded.elapsed()
    );
    assert!(caught > 0, "the failover caught no request: {statuses:?}");
    let first_success = first_success.expect("no request succeeded within 20 s of the failover");
    assert!(
        first_success < Duration::from_secs(10),
        "requests succeeded again only {first_success:?} after the failover"
    );
    assert!(
        failed.is_empty(),
        "requests failed after the failover: {failed:?}"
    );
    let readiness = client
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(ready_again, "/health/ready still not ready: {readiness}");
}

#[tokio::test]
async fn internal_servicedesk_urls_are_refused_unless_allowed() {
    const INTERNAL: &[&str] = &[
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:6379/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://10.0.0.5/",
        "http://redis:6379/",
        "http://postgres/",
        "http://localhost:8080/",
        "http://[::1]/",
        "http://[fd12::1]/",
        "http://100.64.1.1/",
        "http://metadata.google.internal/",
        "http://desk.local/",
        "http://0.0.0.0/",
    ];
    let (db, vars) = api_vars(&[]).await;
    let api = ApiProcess::start(vars.clone()).await;
    let client = reqwest::Client::new();
    let create = |api: &ApiProcess, tenant: String, url: &str| {
        authorised(&client, reqwest::Method::POST, api.url("/api/v1/tenants"))
            .json(&json!({
                "tenant_id": tenant,
                "name": "Internal",
                "servicedesk_url": url,
                "servicedesk_api_key": "k",
                "webhook_signing_secret": "w",
            }))
            .send()
    };
    for (i, url) in INTERNAL.iter().enumerate() {
        let response = create(&api, format!("t{i}"), url).await.expect("request");
        let body = assert_problem(response, 400).await;
        println!("{url}: 400 {}", body["detail"]);
    }
    // PATCH follows the same rule.
    api.create_tenant("public").await;
    let patch = authorised(
        &client,
        reqwest::Method::PATCH,
        api.url("/api/v1/tenants/public"),
    )
    .json(&json!({"servicedesk_url": "http://127.0.0.1/"}))
    .send()
    .await
    .expect("request");
    assert_problem(patch, 400).await;
    drop(api);

    let mut allowed = vars;
    allowed.insert("AI_AGENTS_ALLOW_INTERNAL_URLS".into(), "true".into());
    let api = ApiProcess::start(allowed).await;
    for (i, url) in INTERNAL.iter().enumerate() {
        let response = create(&api, format!("t{i}"), url).await.expect("request");
        assert_eq!(
            response.status(),
            201,
            "{url} with AI_AGENTS_ALLOW_INTERNAL_URLS=true"
        );
    }
    drop(db);
}

#[tokio::test]
async fn oversized_heads_get_problem_answers() {
    let (_db, vars) = api_vars(&[]).await;
    let api = ApiProcess::start(vars).await;
    let client = reqwest::Client::new();

    let mut many = reqwest::header::HeaderMap::new();
    for i in 0..200 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
            reqwest::header::HeaderValue::from_static("v"),
        );
    }
    let response = client
        .get(api.url("/health"))
        .headers(many)
        .send()
        .await
        .expect("request");
    let body = assert_problem(response, 431).await;
    println!("200 headers: 431 {}", body["detail"]);

    let response = client
        .get(api.url("/health"))
        .header("x-big", "a".repeat(500 * 1024))
        .send()
        .await
        .expect("request");
    let body = assert_problem(response, 431).await;
    println!("one 500 KB header: 431 {}", body["detail"]);

    // A request line hyper cannot parse never reaches the API: hyper answers 400 itself, with
    // an empty body, and closes the connection (docs/api.md says so).
    let mut stream = TcpStream::connect(api.addr).await.expect("connect");
    stream
        .write_all(b"HELLO THERE\r\n\r\n")
        .await
        .expect("send");
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    println!(
        "garbage request line: {}",
        answer.lines().next().unwrap_or_default()
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(closed.is_some());
}

#[tokio::test]
async fn metrics_can_have_a_port_of_their_own() {
    let metrics_port = closed_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_db, vars) = api_vars(&[("AI_AGENTS_API_METRICS_ADDR", &metrics_addr)]).await;
    let api = ApiProcess::start(vars).await;
    let client = reqwest::Client::new();
    let on_api = client
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_problem(on_api, 404).await;
    let own = client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(own.status(), 200);
    let text = own.text().await.expect("text");
    assert!(text.contains("ai_agents_build_info"), "{text}");
    let other = client
        .get(format!("http://{metrics_addr}/api/v1/tenants"))
        .send()
        .await
        .expect("request");
    assert_eq!(other.status(), 404, "the metrics port serves nothing else");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enqueue_lost_in_a_frozen_redis_leaves_no_dead_letter() {
    let redis = OwnRedis::start().await;
    let db = TestDb::new().await;
    let prefix = queue_prefix();
    let mut vars = test_vars(&db.app_url, &redis.url(), &prefix);
    vars.insert("AI_AGENTS_REDIS_POOL_TIMEOUT_SECS".into(), "1".into());
    let api = ApiProcess::start(vars.clone()).await;
    let client = reqwest::Client::new();
    api.create_tenant("acme").await;

    // Frozen: the XADDs are buffered, the API gives up after the pool timeout.
    redis.freeze();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let response = authorised(
            &client,
            reqwest::Method::POST,
            api.url("/api/v1/enhancements"),
        )
        .json(&json!({"tenant_id": "acme", "ticket_id": format!("INC-{i}")}))
        .send()
        .await
        .expect("request");
        statuses.push(response.status().as_u16());
    }
    redis.thaw();
    assert_eq!(statuses, vec![503, 503, 503]);

    // The buffered jobs land now, without their rows: a worker drops them.
    let mut worker_vars = vars;
    worker_vars.insert("AI_AGENTS_TASK_TIME_LIMIT_SECS".into(), "10".into());
    worker_vars.insert("AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS".into(), "8".into());
    worker_vars.insert("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS".into(), "12".into());
    let _worker = Worker::start(&worker_vars);
    let queue = Queue::new(redis_pool(&redis.url()), &prefix);
    let settled = eventually(Duration::from_secs(15), || async {
        queue
            .outcomes()
            .await
            .is_ok_and(|o| o.get("dropped").copied().unwrap_or(0) == 3)
    })
    .await;
    let stats = queue.stats().await.expect("stats");
    let outcomes = queue.outcomes().await.expect("outcomes");
    println!(
        "Redis frozen during 3 POSTs: answers {statuses:?}; after the thaw: {stats:?}, outcomes {outcomes:?}"
    );
    assert!(settled, "{outcomes:?}");
    assert_eq!(
        stats.dead, 0,
        "a job without a row must not be dead-lettered"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM enhancement_history")
        .fetch_one(&db.owner_pool().await)
        .await
        .expect("count");
    assert_eq!(rows, 0, "no row without a job: every answer was a 503");
}
