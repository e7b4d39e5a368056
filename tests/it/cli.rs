//! The binaries as a user runs them: subcommands, configuration errors, logs, signals.

use std::{collections::HashMap, time::Duration};

use crate::helpers::{
    API, Run, TEST_KEY, TEST_TOKEN, TestApp, TestDb, WORKER, closed_port, command, eventually,
    host_port, owner_url, queue_prefix, redis_url, run, signal, test_vars,
};

#[tokio::test]
async fn version_needs_no_configuration() {
    let garbage: HashMap<String, String> = [
        ("AI_AGENTS_ENVIRONMENT", "nonsense"),
        ("AI_AGENTS_BIND_ADDR", "x"),
    ]
    .iter()
    .map(|(k, v)| ((*k).into(), (*v).into()))
    .collect();
    for (binary, name) in [(API, "ai-agents-api"), (WORKER, "ai-agents-worker")] {
        let Run { code, stdout, .. } = run(binary, &["--version"], &garbage).await;
        assert_eq!(code, 0);
        assert_eq!(
            stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[tokio::test]
async fn configuration_errors_name_the_variable_and_hide_the_value() {
    let base = test_vars("postgres://u:p@127.0.0.1:1/x", "redis://127.0.0.1:1", "x");
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("AI_AGENTS_ADMIN_TOKEN", None),
        ("AI_AGENTS_ENCRYPTION_KEY", None),
        ("AI_AGENTS_ENCRYPTION_KEY", Some("sekrit-not-base64")),
        ("AI_AGENTS_ENCRYPTION_OLD_KEYS", Some("sekrit-not-base64")),
        ("AI_AGENTS_ENCRYPTION_OLD_KEYS", Some(TEST_KEY)),
        ("AI_AGENTS_DATABASE_URL", None),
        ("AI_AGENTS_DATABASE_URL", Some("mysql://root:sekrit@db/x")),
        ("AI_AGENTS_BIND_ADDR", Some("sekrit")),
        ("AI_AGENTS_DATABASE_POOL_SIZE", Some("sekrit")),
        ("AI_AGENTS_ENVIRONMENT", Some("sekrit")),
    ];
    for (variable, value) in cases {
        let mut vars = base.clone();
        match value {
            Some(v) => vars.insert(variable.to_owned(), v.to_owned()),
            None => vars.remove(variable),
        };
        let Run {
            code,
            stdout,
            stderr,
        } = run(API, &[], &vars).await;
        assert_ne!(code, 0, "{variable}={value:?} was accepted");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            !stderr.contains("sekrit") && !stdout.contains("sekrit"),
            "value echoed: {stderr}"
        );
    }
    let mut vars = base.clone();
    vars.insert("AI_AGENTS_WORKER_CONCURRENCY".into(), "0".into());
    let Run { code, stderr, .. } = run(WORKER, &[], &vars).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("AI_AGENTS_WORKER_CONCURRENCY"), "{stderr}");
}

#[tokio::test]
async fn a_reclaim_time_not_above_the_hard_limit_stops_the_worker() {
    let mut vars = test_vars(
        "postgres://u:p@127.0.0.1:1/x",
        &redis_url(),
        &queue_prefix(),
    );
    vars.insert("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS".into(), "3".into());
    vars.insert("AI_AGENTS_TASK_TIME_LIMIT_SECS".into(), "30".into());
    vars.insert("AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS".into(), "20".into());
    let Run { code, stderr, .. } = run(WORKER, &[], &vars).await;
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS")
            && stderr.contains("AI_AGENTS_TASK_TIME_LIMIT_SECS"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn unknown_arguments_are_refused_and_help_needs_no_configuration() {
    for binary in [API, WORKER] {
        let Run { code, stderr, .. } = run(binary, &["serve", "--now"], &HashMap::new()).await;
        assert_eq!(code, 2, "{binary}: {stderr}");
        assert!(stderr.contains("usage"), "{binary}: {stderr}");
        let Run { code, stdout, .. } = run(binary, &["--help"], &HashMap::new()).await;
        assert_eq!(code, 0, "{binary}");
        assert!(stdout.starts_with("usage:"), "{binary}: {stdout}");
    }
}

#[tokio::test]
async fn migrate_and_revert_subcommands() {
    let db = TestDb::empty().await;
    let vars = test_vars(&db.owner_url, &redis_url(), &queue_prefix());
    let Run { code, stderr, .. } = run(API, &["migrate"], &vars).await;
    assert_eq!(code, 0, "{stderr}");
    let Run { code, stderr, .. } = run(API, &["migrate"], &vars).await;
    assert_eq!(code, 0, "re-run: {stderr}");
    let pool = db.owner_pool().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('tenant_configs', 'enhancement_history')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);
    // Each revert takes back the newest migration: first the worker's batch calls, then the
    // job claims, then the schema.
    let calls = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_proc WHERE proname IN ('claim_jobs', 'complete_jobs')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(calls().await, 2);
    let Run { code, stderr, .. } = run(API, &["migrate", "revert"], &vars).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(calls().await, 0);
    let Run { code, stderr, .. } = run(API, &["migrate", "revert"], &vars).await;
    assert_eq!(code, 0, "{stderr}");
    let claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'enhancement_history' AND column_name = 'claim'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(claims, 0);
    let Run { code, stderr, .. } = run(API, &["migrate", "revert"], &vars).await;
    assert_eq!(code, 0, "{stderr}");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'tenant_configs'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tables, 0);
}

/// `migrate` that cannot reach PostgreSQL says why, once, on one line: the last connect error
/// after the timeout when nothing listens, at once when the server refuses the login.
#[tokio::test]
async fn migrate_names_why_postgres_is_unreachable_once() {
    let mut vars = test_vars("postgres://unused", &redis_url(), &queue_prefix());
    vars.insert("AI_AGENTS_LOG_FORMAT".into(), "json".into());

    let port = closed_port();
    vars.insert(
        "AI_AGENTS_DATABASE_URL".into(),
        format!("postgres://u:sekrit@127.0.0.1:{port}/x"),
    );
    vars.insert("AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS".into(), "2".into());
    let started = std::time::Instant::now();
    let Run {
        code,
        stdout,
        stderr,
    } = run(API, &["migrate"], &vars).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "gave up without waiting"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} within 2 s (AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS)"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(!stderr.contains("sekrit") && !stdout.contains("sekrit"));
    // The JSON log line carries the same text.
    assert!(stdout.contains("Connection refused"), "{stdout}");

    // A wrong password is an answer, not an outage: no waiting for the 30 s timeout.
    vars.insert(
        "AI_AGENTS_DATABASE_URL".into(),
        format!(
            "postgres://ai_agents_owner:sekrit-wrong@{}/ai_agents",
            host_port(&owner_url())
        ),
    );
    vars.insert(
        "AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS".into(),
        "30".into(),
    );
    let started = std::time::Instant::now();
    let Run {
        code,
        stdout,
        stderr,
    } = run(API, &["migrate", "revert"], &vars).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited for the timeout"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("password authentication failed").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("sekrit") && !stdout.contains("sekrit"));
}

#[tokio::test]
async fn serves_json_logs_answers_healthcheck_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let port = closed_port();
    let mut vars = test_vars(&db.app_url, &redis_url(), &queue_prefix());
    vars.insert("AI_AGENTS_BIND_ADDR".into(), format!("127.0.0.1:{port}"));
    vars.insert("AI_AGENTS_LOG_LEVEL".into(), "info".into());
    vars.insert("AI_AGENTS_LOG_FORMAT".into(), "json".into());
    let server = command(API, &vars).spawn().unwrap();

    let mut healthy = false;
    for _ in 0..100 {
        let Run { code, .. } = run(API, &["healthcheck"], &vars).await;
        if code == 0 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "healthcheck never succeeded");
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://127.0.0.1:{port}/api/v1/tenants"))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Created once, then refused as a duplicate: neither path may log the secrets.
    let body = serde_json::json!({
        "tenant_id": "logcheck",
        "name": "Log check",
        "servicedesk_url": "https://desk.example.com",
        "servicedesk_api_key": "PLAINTEXT-API-KEY-in-log-check",
        "webhook_signing_secret": "PLAINTEXT-WEBHOOK-in-log-check",
    });
    for expected in [201, 409] {
        let response = client
            .post(format!("http://127.0.0.1:{port}/api/v1/tenants"))
            .bearer_auth(TEST_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
    }

    assert!(signal(server.id().unwrap(), "TERM"));
    let output = tokio::time::timeout(Duration::from_secs(10), server.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "exit 0 after SIGTERM");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "expected log lines, got {stdout}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["timestamp", "level", "target", "service", "environment"] {
            assert!(value.get(key).is_some(), "{key} missing: {line}");
        }
        assert_eq!(value["service"], "api");
        assert_eq!(value["environment"], "test");
        assert!(!line.contains(TEST_TOKEN), "token logged");
        assert!(
            !line.contains("ai_agents_app:ai_agents_app"),
            "database password logged"
        );
    }
    assert!(
        stdout.contains("request_id"),
        "request logs carry the request id"
    );

    // The healthcheck fails when nothing listens.
    let Run { code, stderr, .. } = run(API, &["healthcheck"], &vars).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("unhealthy"));
}

/// SIGTERM while the API is still starting (here: its migrations waiting for a PostgreSQL that
/// is not there) ends it at once with 0, as when it serves, not by the signal.
#[tokio::test]
async fn sigterm_while_starting_ends_the_api_cleanly() {
    let mut vars = test_vars("postgres://unused", &redis_url(), &queue_prefix());
    vars.insert(
        "AI_AGENTS_DATABASE_URL".into(),
        format!("postgres://u:p@127.0.0.1:{}/x", closed_port()),
    );
    vars.insert("AI_AGENTS_RUN_MIGRATIONS".into(), "true".into());
    vars.insert(
        "AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS".into(),
        "30".into(),
    );
    vars.insert("AI_AGENTS_LOG_LEVEL".into(), "info".into());
    let server = command(API, &vars).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(signal(server.id().unwrap(), "TERM"));
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(10), server.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!(
        "SIGTERM while starting: {:?} after {:?}",
        output.status,
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(stdout.contains("stopped while starting"), "{stdout}");
}

#[tokio::test]
async fn worker_starts_and_stops_cleanly_and_waits_for_redis() {
    let db = TestDb::new().await;
    let mut vars = test_vars(
        &db.app_url,
        &format!("redis://127.0.0.1:{}", closed_port()),
        &queue_prefix(),
    );
    vars.insert("AI_AGENTS_LOG_FORMAT".into(), "json".into());
    vars.insert("AI_AGENTS_LOG_LEVEL".into(), "info".into());
    // Redis is unreachable: the worker keeps retrying instead of crash-looping, and still stops on SIGTERM.
    let worker = command(WORKER, &vars).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(signal(worker.id().unwrap(), "TERM"));
    let output = tokio::time::timeout(Duration::from_secs(10), worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Redis not reachable yet"), "{stdout}");
}

/// A worker on a fresh database reaching Redis at `redis`, its listener
/// (`AI_AGENTS_WORKER_METRICS_ADDR`) on a free port, once `/health` answers there: the process,
/// the listener's URL, its variables and a client.
async fn worker_with_listener(
    redis: &str,
) -> (
    TestDb,
    tokio::process::Child,
    String,
    HashMap<String, String>,
    reqwest::Client,
) {
    let db = TestDb::new().await;
    let port = closed_port();
    let mut vars = test_vars(&db.app_url, redis, &queue_prefix());
    vars.insert(
        "AI_AGENTS_WORKER_METRICS_ADDR".into(),
        format!("127.0.0.1:{port}"),
    );
    let worker = command(WORKER, &vars).spawn().unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(10), || async {
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the worker's /health never answered");
    (db, worker, base, vars, client)
}

/// SIGTERM to `child`, which must then exit with 0 within 10 s.
async fn stops_with_0_on_sigterm(child: tokio::process::Child) {
    assert!(signal(child.id().unwrap(), "TERM"));
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
}

/// With `AI_AGENTS_WORKER_METRICS_ADDR` the worker serves `/metrics` and its pod's probes,
/// `/health` and `/health/ready` (the API's answers), on that port; a port it cannot bind stops
/// it at once, naming the variable.
#[tokio::test]
async fn worker_serves_metrics_on_its_own_port_or_refuses_to_start() {
    let (_db, worker, base, mut vars, client) = worker_with_listener(&redis_url()).await;
    let health: serde_json::Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{health}");
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"status": "ready", "dependencies": {"database": "connected", "redis": "connected"}})
    );
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = response.text().await.unwrap();
    assert!(body.contains("ai_agents_build_info"), "{body}");
    stops_with_0_on_sigterm(worker).await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    vars.insert(
        "AI_AGENTS_WORKER_METRICS_ADDR".into(),
        taken.local_addr().unwrap().to_string(),
    );
    let Run { code, stderr, .. } = run(WORKER, &[], &vars).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot serve metrics on AI_AGENTS_WORKER_METRICS_ADDR"),
        "{stderr}"
    );
}

/// A worker that cannot reach Redis says so on `/health/ready` (503, `redis` disconnected,
/// `database` connected) within the probe's bound, while its liveness stays 200.
#[tokio::test]
async fn worker_readiness_names_the_dependency_it_cannot_reach() {
    let redis_down = format!("redis://127.0.0.1:{}", closed_port());
    let (_db, worker, base, _, client) = worker_with_listener(&redis_down).await;
    let asked = std::time::Instant::now();
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"status": "not_ready", "dependencies": {"database": "connected", "redis": "disconnected"}})
    );
    assert!(took < Duration::from_secs(3), "the probe took {took:?}");
    stops_with_0_on_sigterm(worker).await;
}

/// The first SIGTERM lets in-flight work finish within the grace period; a second one ends
/// the process at once, with 130, for the operator who does not want to wait.
#[tokio::test]
async fn second_signal_ends_a_draining_worker_at_once() {
    let app = TestApp::spawn().await;
    app.create_tenant("drain").await;
    app.create_enhancement("drain", "INC-1").await;
    // The worker reaches Redis but not PostgreSQL: its job waits for a database connection
    // (up to the test's 10 s connect timeout), so it is still in flight when the signals come.
    let mut vars = test_vars(
        &format!("postgres://u:p@127.0.0.1:{}/x", closed_port()),
        &redis_url(),
        &app.prefix,
    );
    vars.insert("AI_AGENTS_SHUTDOWN_GRACE_SECS".into(), "20".into());
    let worker = command(WORKER, &vars).spawn().unwrap();
    let taken = eventually(Duration::from_secs(10), || async {
        app.queue.stats().await.is_ok_and(|s| s.in_flight == 1)
    })
    .await;
    assert!(taken, "the worker never took the job");

    let pid = worker.id().unwrap();
    let term = || signal(pid, "TERM");
    assert!(term());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = std::time::Instant::now();
    assert!(term());
    let output = tokio::time::timeout(Duration::from_secs(10), worker.wait_with_output())
        .await
        .expect("the second signal ends the worker")
        .unwrap();
    assert_eq!(output.status.code(), Some(130));
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "took {:?} after the second signal",
        second.elapsed()
    );
}
