//! The API under pressure: a burst bigger than its pool, and SIGTERM during steady load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::Method;

use crate::helpers::{
    API, TEST_TOKEN, TestApp, TestDb, closed_port, command, eventually, queue_prefix, redis_url,
    signal, tenant_body, test_vars,
};

#[tokio::test]
async fn a_burst_larger_than_the_pool_gets_answers_or_503s_never_other_errors() {
    let db = TestDb::new().await;
    let url = db.app_url.clone();
    let app = Arc::new(
        TestApp::spawn_with(db, &url, &redis_url(), |vars| {
            vars.insert("AI_AGENTS_DATABASE_POOL_SIZE".into(), "1".into());
        })
        .await,
    );
    // Open the pool's one connection first, so the burst measures waiting, not connecting.
    app.create_tenant("warm-up").await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let response = app
                .req(Method::POST, "/api/v1/tenants")
                .json(&tenant_body(&format!("burst-{i}")))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), begun.elapsed())
        }));
    }
    let mut created = 0;
    for task in tasks {
        let (status, took) = task.await.unwrap();
        assert!(status == 201 || status == 503, "unexpected {status}");
        assert!(took < Duration::from_secs(10), "a request waited {took:?}");
        if status == 201 {
            created += 1;
        }
    }
    assert!(created > 0, "some requests succeed");
    eprintln!(
        "burst of 200 on a pool of 1: {created} created, the rest 503, in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_during_load_completes_accepted_requests_and_exits_zero() {
    let db = TestDb::new().await;
    let port = closed_port();
    let mut vars = test_vars(&db.app_url, &redis_url(), &queue_prefix());
    vars.insert("AI_AGENTS_BIND_ADDR".into(), format!("127.0.0.1:{port}"));
    let server = command(API, &vars).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(
        eventually(Duration::from_secs(10), || async {
            client.get(format!("{base}/health")).send().await.is_ok()
        })
        .await
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let refused_after_stop = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, base, stop) = (client.clone(), base.clone(), Arc::clone(&stop));
        let (ok, refused) = (Arc::clone(&ok), Arc::clone(&refused_after_stop));
        workers.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for _ in 0..2000 {
                let signalled = stop.load(Ordering::SeqCst);
                match client
                    .get(format!("{base}/api/v1/tenants"))
                    .bearer_auth(TEST_TOKEN)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(response) => bad.push(response.status().as_u16()),
                    // Connections refused or closed once the server stops taking work.
                    Err(_) if signalled || stop.load(Ordering::SeqCst) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Err(e) => panic!("request failed before SIGTERM: {e}"),
                }
            }
            bad
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = server.id().unwrap();
    stop.store(true, Ordering::SeqCst);
    let signalled_at = Instant::now();
    assert!(signal(pid, "TERM"));
    let output = tokio::time::timeout(Duration::from_secs(10), server.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "exit 0 after SIGTERM");
    assert!(
        signalled_at.elapsed() < Duration::from_secs(6),
        "within the grace period"
    );
    for worker in workers {
        let bad = worker.await.unwrap();
        assert!(bad.is_empty(), "non-200 answers: {bad:?}");
    }
    assert!(ok.load(Ordering::SeqCst) > 0);
    eprintln!(
        "SIGTERM under load: {} requests answered 200, {} clients saw the listener close, exit 0 after {:?}",
        ok.load(Ordering::SeqCst),
        refused_after_stop.load(Ordering::SeqCst),
        signalled_at.elapsed()
    );
}
