//! A bounded soak: minutes of mixed reads, writes and job drains at moderate load against the
//! real API and worker processes. Not part of every test run (it is `#[ignore]`d); run it with
//!
//! ```text
//! AI_AGENTS_SOAK_SECS=180 cargo test --release --test it -- soak:: --ignored --nocapture
//! ```
//!
//! It fails when a request gets an unexpected status, when an enhancement is not completed
//! once the load stops, or when either process's memory grows by more than a quarter after
//! the first 10 s under load.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{
    API, TEST_TOKEN, TestDb, WORKER, closed_port, command, eventually, queue_prefix, redis_url,
    signal, tenant_body, test_vars,
};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run explicitly (see the module docs)"]
async fn mixed_load_keeps_memory_flat_and_completes_every_job() {
    let secs: u64 = std::env::var("AI_AGENTS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let db = TestDb::new().await;
    let port = closed_port();
    let mut vars = test_vars(&db.app_url, &redis_url(), &queue_prefix());
    vars.insert("AI_AGENTS_BIND_ADDR".into(), format!("127.0.0.1:{port}"));
    vars.insert("AI_AGENTS_DATABASE_POOL_SIZE".into(), "10".into());
    let api = command(API, &vars).spawn().unwrap();
    let worker = command(WORKER, &vars).spawn().unwrap();
    let (api_pid, worker_pid) = (api.id().unwrap(), worker.id().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    assert!(
        eventually(Duration::from_secs(10), || async {
            client
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await
    );
    for t in 0..10 {
        let response = client
            .post(format!("{base}/api/v1/tenants"))
            .bearer_auth(TEST_TOKEN)
            .json(&tenant_body(&format!("soak-{t}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_rss = (rss_kib(api_pid), rss_kib(worker_pid));

    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for n in 0..8_u64 {
        let (client, base) = (client.clone(), base.clone());
        let (statuses, created) = (Arc::clone(&statuses), Arc::clone(&created));
        tasks.push(tokio::spawn(async move {
            let mut i = n;
            while Instant::now() < deadline {
                i += 1;
                let tenant = format!("soak-{}", i % 10);
                let (label, response) = match i % 4 {
                    0 => (
                        "POST enhancement",
                        client
                            .post(format!("{base}/api/v1/enhancements"))
                            .json(&json!({"tenant_id": tenant, "ticket_id": format!("T-{n}-{i}")})),
                    ),
                    1 => (
                        "GET tenant",
                        client.get(format!("{base}/api/v1/tenants/{tenant}")),
                    ),
                    2 => (
                        "GET enhancements",
                        client.get(format!(
                            "{base}/api/v1/enhancements?tenant_id={tenant}&limit=20"
                        )),
                    ),
                    _ => (
                        "GET stats",
                        client.get(format!("{base}/api/v1/queue/stats")),
                    ),
                };
                let response = response.bearer_auth(TEST_TOKEN).send().await.unwrap();
                let status = response.status().as_u16();
                if label == "POST enhancement" && status == 202 {
                    let body: Value = response.json().await.unwrap();
                    created
                        .lock()
                        .unwrap()
                        .push(body["id"].as_str().unwrap().to_owned());
                }
                *statuses
                    .lock()
                    .unwrap()
                    .entry(format!("{label} {status}"))
                    .or_default() += 1;
                // Moderate load: about 100 requests/s in all.
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(
            Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
        samples.push((rss_kib(api_pid), rss_kib(worker_pid)));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let ids = created.lock().unwrap().clone();
    let drained = eventually(Duration::from_secs(60), || async {
        let stats: Value = client
            .get(format!("{base}/api/v1/queue/stats"))
            .bearer_auth(TEST_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["pending"] == 0 && stats["in_flight"] == 0 && stats["retrying"] == 0
    })
    .await;
    let end_rss = (rss_kib(api_pid), rss_kib(worker_pid));
    let owner = db.owner_pool().await;
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.cross_tenant', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM enhancement_history GROUP BY status ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    drop(tx);

    eprintln!(
        "soak: {secs} s, 8 clients, statuses: {:?}",
        statuses.lock().unwrap()
    );
    eprintln!(
        "soak: {} enhancements created; rows by status: {by_status:?}; queue drained: {drained}",
        ids.len()
    );
    eprintln!(
        "soak: RSS KiB (api, worker) start {start_rss:?}, every 10 s {samples:?}, end {end_rss:?}"
    );
    let unexpected: Vec<String> = statuses
        .lock()
        .unwrap()
        .keys()
        .filter(|k| !(k.ends_with(" 200") || k.ends_with(" 202")))
        .cloned()
        .collect();
    assert!(unexpected.is_empty(), "unexpected statuses: {unexpected:?}");
    assert!(drained, "the queue did not drain");
    assert_eq!(
        by_status,
        vec![("completed".to_owned(), i64::try_from(ids.len()).unwrap())]
    );
    // Flat means: after the first 10 s under load (pools and caches warm), no growth beyond
    // noise. The idle start is reported, not used as the baseline.
    let warm = samples.first().copied().unwrap_or(start_rss);
    assert!(
        end_rss.0 <= warm.0 * 5 / 4 + 2048,
        "API memory grew: {warm:?} -> {end_rss:?}"
    );
    assert!(
        end_rss.1 <= warm.1 * 5 / 4 + 2048,
        "worker memory grew: {warm:?} -> {end_rss:?}"
    );
    for pid in [api_pid, worker_pid] {
        signal(pid, "TERM");
    }
    let (api_out, worker_out) = tokio::join!(api.wait_with_output(), worker.wait_with_output());
    assert_eq!(api_out.unwrap().status.code(), Some(0));
    assert_eq!(worker_out.unwrap().status.code(), Some(0));
}
