//! The worker as operators run it: a real `ai-agents-worker` process against real PostgreSQL and
//! Redis, no mocks; failures and slowness are injected by the probes of the worker harness
//! ([`crate::helpers::worker`]).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ai_agents::{
    queue::{GROUP, Job, JobKind, Queue, QueueStats},
    worker::sweeper,
};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::{
    Outage, OwnRedis, TestApp, TestDb, WORKER, command, eventually, host_port, queue_prefix,
    redis_pool, redis_url, terminate_sessions, test_vars, via,
    worker::{
        Env, TENANT, Worker, assert_all_completed_once, bad_tenant_job, enhancement_job, stats,
        until_completed, until_idle,
    },
};

// 1 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_jobs_complete_exactly_once() {
    const N: usize = 1000;
    // Fewer lanes than the test API's 5 database connections: no request waits for one.
    const LANES: usize = 4;
    let app = Arc::new(TestApp::spawn().await);
    let env = Env::of_app(&app).await;
    app.create_tenant(TENANT).await;

    // Requests through the API: row and job in one logical step.
    let mut posts = JoinSet::new();
    for lane in 0..LANES {
        let app = Arc::clone(&app);
        posts.spawn(async move {
            for i in (lane..N).step_by(LANES) {
                app.create_enhancement(TENANT, &format!("T-{i}")).await;
            }
        });
    }
    while let Some(done) = posts.join_next().await {
        done.expect("requests sent");
    }
    assert_eq!(env.stats().await, stats(N as u64, 0, 0, 0));

    let started = Instant::now();
    let mut worker = Worker::start(&env.worker_vars(&[
        ("AI_AGENTS_WORKER_CONCURRENCY", "8"),
        ("AI_AGENTS_DATABASE_POOL_SIZE", "10"),
    ]));
    let drained = until_completed(&env, N as i64, Duration::from_secs(30)).await;
    let drain = started.elapsed();
    assert!(drained, "not drained in 30 s:\n{}", worker.log());
    assert!(
        until_idle(&env, 0, Duration::from_secs(5)).await,
        "queue not empty: {:?}",
        env.stats().await
    );
    eprintln!(
        "drain: {N} jobs in {:.2} s ({:.0} jobs/s, concurrency 8, from process start)",
        drain.as_secs_f64(),
        N as f64 / drain.as_secs_f64()
    );
    assert_all_completed_once(&env, N, &worker.log()).await;
    assert_eq!(env.stats().await, QueueStats::default());

    worker.signal("TERM");
    let status = worker.exit(Duration::from_secs(8)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        worker.log()
    );
}

/// "No row without a job" must hold even when the request's deadline fires between the commit of
/// the row and the `XADD` of its job: the client gets a 503, so there must be no `pending` row
/// left that no job will ever process. A slow insert (1.2 s) and a deferred constraint trigger
/// (1.2 s more at commit) make the commit finish after the 2 s request deadline, each statement
/// within the 1.5 s statement timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_cut_by_its_deadline_leaves_no_row_without_a_job() {
    let db = TestDb::new().await;
    let url = db.app_url.clone();
    let app = TestApp::spawn_with(db, &url, &redis_url(), |vars| {
        vars.insert("AI_AGENTS_REQUEST_TIMEOUT_SECS".into(), "2".into());
        vars.insert(
            "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS".into(),
            "1500".into(),
        );
    })
    .await;
    let env = Env::of_app(&app).await;
    app.create_tenant(TENANT).await;
    sqlx::raw_sql(
        r#"
        CREATE FUNCTION test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_sleep(1.2);
            RETURN NULL;
        END;
        $$;
        CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_sleep(1.2);
            RETURN NEW;
        END;
        $$;
        CREATE TRIGGER test_slow_insert
            BEFORE INSERT ON enhancement_history
            FOR EACH ROW WHEN (NEW.ticket_id = 'slow-commit')
            EXECUTE FUNCTION test_slow_insert();
        CREATE CONSTRAINT TRIGGER test_slow_commit
            AFTER INSERT ON enhancement_history
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (NEW.ticket_id = 'slow-commit')
            EXECUTE FUNCTION test_slow_commit();
        "#,
    )
    .execute(&env.owner)
    .await
    .expect("slow commit trigger");

    let response = app
        .req(reqwest::Method::POST, "/api/v1/enhancements")
        .json(&serde_json::json!({"tenant_id": TENANT, "ticket_id": "slow-commit"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503, "the deadline answers");
    // Let the commit finish on the server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = env.rows().await;
    let queued = env.stats().await;
    assert!(
        rows.is_empty() || queued.pending == rows.len() as u64,
        "rows {rows:?} but queue {queued:?}: a pending row that no job will ever process"
    );
}

// 2 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_then_dead_lettered() {
    let env = Env::new().await;
    env.plan("flaky", 2, 0).await;
    env.plan("doomed", 1_000, 0).await;
    let ids = env
        .insert(&["flaky".into(), "doomed".into(), "steady".into()])
        .await;
    let (flaky, doomed, steady) = (ids[0], ids[1], ids[2]);
    env.enqueue(&ids).await;

    // One job per batch: the probe counts every time a row's claim begins, and a failed claim
    // of a batch (the injected failure fails the whole statement) would count its neighbours'
    // claims too before each is claimed alone.
    let worker = Worker::start(&env.worker_vars(&[
        ("AI_AGENTS_WORKER_MAX_RETRIES", "3"),
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "200"),
        ("AI_AGENTS_WORKER_CONCURRENCY", "1"),
    ]));
    let settled = eventually(Duration::from_secs(25), || async {
        env.stats().await == stats(0, 0, 0, 1)
            && env.row(doomed).await.status == "failed"
            && env.row(flaky).await.status == "completed"
    })
    .await;
    assert!(settled, "{:?}\n{}", env.rows().await, worker.log());

    // Fails twice, then succeeds: three attempts.
    assert_eq!(env.attempts("flaky").await, 3);
    assert_eq!(env.row(steady).await.status, "completed");
    // Always fails: the first attempt and max_retries more, then failed and dead-lettered.
    assert_eq!(env.attempts("doomed").await, 4);
    let row = env.row(doomed).await;
    let error = row.error_message.expect("failed row has an error message");
    assert!(error.contains("gave up after 4 attempts"), "{error}");
    assert!(error.contains("injected failure"), "{error}");
    assert!(row.completed_at.is_some());
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 4);
    let job = Job::decode(&letters[0].job).expect("dead letter holds the job");
    assert_eq!(job.kind, enhancement_job(doomed).kind);
    assert_eq!(job.attempt, 3, "the job as last delivered");
    let dead_len: u64 = env
        .redis(redis::cmd("XLEN").arg(&env.queue.keys().dead))
        .await;
    assert_eq!(dead_len, 1);

    // Nothing more happens to either of them.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(env.attempts("flaky").await, 3);
    assert_eq!(env.attempts("doomed").await, 4);
    assert_eq!(env.stats().await, stats(0, 0, 0, 1));
    assert_eq!(env.completions().await, (2, 2, 1));
}

/// The schedule between attempts is base, 2×base (+ ≤ 10 % jitter), not later than that by more
/// than a little scheduling slack.
#[tokio::test(flavor = "multi_thread")]
async fn retry_delays_follow_the_backoff_schedule() {
    const BASE: f64 = 0.5;
    const SLACK: f64 = 0.5;
    let env = Env::new().await;
    env.plan("doomed", 1_000, 0).await;
    let ids = env.insert(&["doomed".into()]).await;
    env.enqueue(&ids).await;
    let worker = Worker::start(&env.worker_vars(&[
        ("AI_AGENTS_WORKER_MAX_RETRIES", "2"),
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "500"),
    ]));

    // Timestamps of the attempts, from the attempt counter polled every 10 ms.
    let mut seen: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && Instant::now() < deadline {
        let n = usize::try_from(env.attempts("doomed").await).expect("count");
        while seen.len() < n {
            seen.push(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), 3, "three attempts expected:\n{}", worker.log());
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!(
        "retry delays with base {BASE} s: {:.3} s, {:.3} s (nominal {BASE}, {})",
        gaps[0],
        gaps[1],
        2.0 * BASE
    );
    for (i, gap) in gaps.iter().enumerate() {
        let nominal = BASE * f64::from(1_u32 << i);
        assert!(
            *gap >= nominal * 0.95 && *gap <= nominal * 1.1 + SLACK,
            "delay before retry {} was {gap:.3} s, nominal {nominal} s (+10 % jitter, +{SLACK} s slack)",
            i + 1
        );
    }
    assert!(
        until_idle(&env, 1, Duration::from_secs(10)).await,
        "{:?}",
        env.stats().await
    );
}

// 3 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn permanent_errors_are_dead_lettered_at_once() {
    let env = Env::new().await;
    // A row that does not exist, of an existing tenant: dropped, not dead-lettered.
    env.queue
        .enqueue(&enhancement_job(Uuid::now_v7()))
        .await
        .expect("queued");
    // A tenant id that can never be valid.
    let _: String = env
        .redis(
            redis::cmd("XADD")
                .arg(&env.queue.keys().jobs)
                .arg("*")
                .arg("job")
                .arg(bad_tenant_job()),
        )
        .await;
    // Text that is no job, and an entry without the `job` field.
    let jobs = env.queue.keys().jobs.clone();
    let _: String = env
        .redis(
            redis::cmd("XADD")
                .arg(&jobs)
                .arg("*")
                .arg("job")
                .arg("this is not a job"),
        )
        .await;
    let _: String = env
        .redis(redis::cmd("XADD").arg(&jobs).arg("*").arg("other").arg("x"))
        .await;

    let worker = Worker::start(&env.worker_vars(&[("AI_AGENTS_WORKER_MAX_RETRIES", "3")]));
    let most_retrying = std::cell::Cell::new(0);
    let dead = eventually(Duration::from_secs(10), || async {
        let now = env.stats().await;
        most_retrying.set(most_retrying.get().max(now.retrying));
        now == stats(0, 0, 0, 3)
    })
    .await;
    assert!(dead, "{:?}\n{}", env.stats().await, worker.log());
    assert_eq!(most_retrying.get(), 0, "a permanent error is never retried");

    let letters = env.dead_letters().await;
    assert!(letters.iter().all(|l| l.attempts == 1), "{letters:?}");
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let with = |s: &str| errors.iter().filter(|e| e.contains(s)).count();
    assert_eq!(with("bad payload"), 1, "{errors:?}");
    assert_eq!(with("undecodable job payload"), 2, "{errors:?}");
    let outcomes = env.queue.outcomes().await.expect("outcomes");
    assert_eq!(outcomes.get("dropped"), Some(&1), "{outcomes:?}");

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(env.stats().await, stats(0, 0, 0, 3));
}

/// A payload that is not even UTF-8 is just as undecodable: it must be dead-lettered, not stay
/// in flight forever.
#[tokio::test(flavor = "multi_thread")]
async fn binary_garbage_is_dead_lettered() {
    let env = Env::new().await;
    let jobs = env.queue.keys().jobs.clone();
    let _: String = env
        .redis(
            redis::cmd("XADD")
                .arg(&jobs)
                .arg("*")
                .arg("job")
                .arg(&[0xff_u8, 0xfe, 0x00, 0x80][..]),
        )
        .await;
    // A good job behind it still gets done.
    let ids = env.insert_and_enqueue(1).await;
    let worker = Worker::start(&env.worker_vars(&[]));
    assert!(
        until_completed(&env, 1, Duration::from_secs(10)).await,
        "{}",
        worker.log()
    );
    assert_eq!(env.row(ids[0]).await.status, "completed");
    assert!(
        until_idle(&env, 1, Duration::from_secs(8)).await,
        "binary payload not dead-lettered: {:?}\n{}",
        env.stats().await,
        worker.log()
    );
}

// 4 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_drain_loses_nothing() {
    const N: usize = 300;
    let env = Env::new().await;
    env.plan("*", 0, 50).await;
    env.insert_and_enqueue(N).await;
    let vars = env.worker_vars(&[]);

    let mut first = Worker::start(&vars);
    assert!(
        until_completed(&env, 60, Duration::from_secs(20)).await,
        "{}",
        first.log()
    );
    first.kill9().await;
    let at_kill = env.completed().await;
    let held = env.stats().await.in_flight;
    assert!(at_kill < N as i64, "the kill came too late to matter");
    eprintln!("kill -9 after {at_kill} of {N} completions, {held} jobs held by the dead worker");

    let restarted = Instant::now();
    let second = Worker::start(&vars);
    assert!(
        until_completed(&env, N as i64, Duration::from_secs(25)).await,
        "{:?} {:?}\n{}",
        env.statuses().await,
        env.stats().await,
        second.log()
    );
    eprintln!(
        "kill -9: the second worker finished the rest in {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        until_idle(&env, 0, Duration::from_secs(5)).await,
        "{:?}",
        env.stats().await
    );
    assert_all_completed_once(&env, N, &second.log()).await;
}

/// Without the idle rule (reclaim after 150 s), the jobs of a killed worker come back to a
/// worker on another host once the killed one's connection is gone and its beat overdue, or its
/// heartbeat (TTL 10 s) has expired.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_of_a_killed_worker_come_back_when_its_heartbeat_expires() {
    const N: usize = 20;
    let env = Env::new().await;
    env.plan("*", 0, 300).await;
    env.insert_and_enqueue(N).await;
    let vars = env.worker_vars(&[("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", "150")]);

    let mut first = Worker::start(&vars);
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.completed().await >= 4 && env.stats().await.in_flight == 4
        })
        .await,
        "{}",
        first.log()
    );
    first.kill9().await;
    let killed = Instant::now();
    let held = env.stats().await.in_flight;
    assert!(held > 0, "the dead worker held nothing");

    // From another host: the first worker's end is not seen in this host's process table.
    let mut elsewhere = vars.clone();
    elsewhere.insert("HOSTNAME".to_owned(), "another-host".to_owned());
    let second = Worker::start(&elsewhere);
    assert!(
        until_completed(&env, N as i64, Duration::from_secs(20)).await,
        "{:?}\n{}",
        env.stats().await,
        second.log()
    );
    let back = killed.elapsed();
    eprintln!(
        "heartbeat reclaim: {held} held jobs of a kill -9'd worker done {:.2} s after the kill",
        back.as_secs_f64()
    );
    // Heartbeat TTL 10 s + one maintenance period 2 s + the work itself.
    assert!(back < Duration::from_secs(16), "{back:?}");
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, N, &second.log()).await;
}

/// A worker started on the host of a kill -9'd one takes its jobs back at once (contract
/// section 6: "at once when that worker restarts"): the dead consumer's connection is gone and
/// its pid has ended here, so its heartbeat, still fresh for seconds, is not waited for.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_of_a_killed_worker_come_back_at_once_when_a_worker_starts_on_its_host() {
    const N: usize = 4;
    let env = Env::new().await;
    env.plan("*", 0, 1_000).await;
    env.insert_and_enqueue(N).await;
    let vars = env.worker_vars(&[]);

    let mut first = Worker::start(&vars);
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.stats().await.in_flight == N as u64
        })
        .await,
        "{}",
        first.log()
    );
    first.kill9().await;
    let second = Worker::start(&vars);
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || async {
            second
                .log()
                .contains("jobs of dead or silent workers put back")
        })
        .await,
        "{}",
        second.log()
    );
    let back = restarted.elapsed();
    eprintln!(
        "restart on the same host: the killed worker's jobs back {:.2} s after the start",
        back.as_secs_f64()
    );
    // Waiting for the beat to age would take 2.5–6.5 s.
    assert!(back < Duration::from_secs(2), "{back:?}\n{}", second.log());
    assert!(
        until_completed(&env, N as i64, Duration::from_secs(20)).await,
        "{:?}\n{}",
        env.stats().await,
        second.log()
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, N, &second.log()).await;
}

// 5 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_drain_exits_cleanly_and_loses_nothing() {
    const N: usize = 300;
    const GRACE_SECS: u64 = 5;
    let env = Env::new().await;
    env.plan("*", 0, 50).await;
    env.insert_and_enqueue(N).await;
    let vars = env.worker_vars(&[("AI_AGENTS_SHUTDOWN_GRACE_SECS", "5")]);

    let mut first = Worker::start(&vars);
    assert!(
        until_completed(&env, 60, Duration::from_secs(20)).await,
        "{}",
        first.log()
    );
    let signalled = Instant::now();
    first.signal("TERM");
    let status = first.exit(Duration::from_secs(GRACE_SECS + 2)).await;
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after {took:?}\n{}",
        first.log()
    );
    let done = env.completed().await;
    eprintln!(
        "SIGTERM: exit 0 after {:.2} s with {done} of {N} done",
        took.as_secs_f64()
    );
    assert!(done < N as i64, "the signal came too late to matter");
    // In-flight work was finished and acknowledged, not abandoned.
    let statuses = env.statuses().await;
    assert_eq!(statuses.get("processing"), None, "{statuses:?}");
    let left = env.stats().await;
    assert_eq!(left.in_flight, 0, "{left:?}");
    assert_eq!(left.pending, N as u64 - done as u64, "{left:?}");

    let second = Worker::start(&vars);
    assert!(
        until_completed(&env, N as i64, Duration::from_secs(20)).await,
        "{}",
        second.log()
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, N, &second.log()).await;
}

/// A job longer than the grace period is abandoned at the end of the grace (exit 0 all the
/// same), and another worker takes it at once because the leaving worker removed its heartbeat.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_abandons_a_job_longer_than_the_grace_and_it_comes_back() {
    let env = Env::new().await;
    env.plan("long", 0, 5_000).await;
    let ids = env.insert(&["long".into()]).await;
    env.enqueue(&ids).await;
    let vars = env.worker_vars(&[
        ("AI_AGENTS_SHUTDOWN_GRACE_SECS", "2"),
        ("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", "150"),
    ]);

    let mut first = Worker::start(&vars);
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.stats().await.in_flight == 1
        })
        .await,
        "{}",
        first.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    first.signal("TERM");
    let status = first.exit(Duration::from_secs(4)).await;
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after {took:?}\n{}",
        first.log()
    );
    assert!(
        took >= Duration::from_millis(1_500),
        "did not wait for the job: {took:?}"
    );
    assert_eq!(
        env.stats().await.in_flight,
        1,
        "the abandoned job is still held"
    );
    assert!(!env.worker_alive().await, "the heartbeat was removed");

    let second = Worker::start(&vars);
    assert!(
        until_completed(&env, 1, Duration::from_secs(15)).await,
        "{:?}\n{}",
        env.stats().await,
        second.log()
    );
    eprintln!(
        "SIGTERM with a 5 s job and 2 s grace: exit 0 after {:.2} s; job done {:.2} s after the signal",
        took.as_secs_f64(),
        signalled.elapsed().as_secs_f64()
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, 1, &second.log()).await;
}

// 6 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_with_aof_keeps_queued_jobs() {
    const N: usize = 50;
    let mut redis = OwnRedis::start().await;
    let env = Env::on_redis(&redis.url()).await;
    env.insert_and_enqueue(N).await;
    // A consumer that took two jobs and will never come back (no heartbeat).
    env.queue.ensure_group().await.expect("group");
    let _: redis::Value = env
        .redis(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg("ghost")
                .arg("COUNT")
                .arg(2)
                .arg("STREAMS")
                .arg(&env.queue.keys().jobs)
                .arg(">"),
        )
        .await;
    assert_eq!(env.stats().await, stats(N as u64 - 2, 2, 0, 0));

    redis.restart().await;
    // A fresh pool: the old connections died with the server.
    let queue = Queue::new(redis_pool(&redis.url()), &env.prefix);
    assert_eq!(
        queue.stats().await.expect("stats after restart"),
        stats(N as u64 - 2, 2, 0, 0),
        "the stream, the group and its pending entries survive the restart"
    );

    let worker = Worker::start(&env.worker_vars(&[]));
    assert!(
        until_completed(&env, N as i64, Duration::from_secs(15)).await,
        "{:?}\n{}",
        env.statuses().await,
        worker.log()
    );
    let env = Env { queue, ..env };
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, N, &worker.log()).await;
}

// 7 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_mid_drain_is_ridden_out() {
    const N: usize = MID_DRAIN_JOBS;
    let (env, relay, worker) = draining_through_a_relay(&[
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "500"),
        ("AI_AGENTS_WORKER_MAX_RETRIES", "3"),
    ])
    .await;

    relay.down();
    let cut = Instant::now();
    let mut most_retrying = 0;
    while cut.elapsed() < Duration::from_secs(2) {
        most_retrying = most_retrying.max(env.stats().await.retrying);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.up();
    let done_at_restore = env.completed().await;
    eprintln!(
        "PostgreSQL outage of 2 s: {done_at_restore} of {N} done at restore, \
         up to {most_retrying} jobs waiting for a retry during the outage"
    );
    assert!(
        done_at_restore < N as i64,
        "the outage came too late to matter"
    );
    assert!(most_retrying > 0, "the outage was not noticed");
    finishes_cleanly(&env, N, &worker, Duration::from_secs(30), cut).await;
}

/// The server ends the worker's sessions three times mid-drain (`pg_terminate_backend`, as an
/// operator, a pooler or a failover manager does). A call under way at that moment fails, and
/// its jobs are retried; the calls after it go out on other connections, also those the pool
/// hands out without a ping. Nothing is lost, doubled, failed or dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_ended_by_the_server_mid_drain_are_ridden_out() {
    const N: usize = MID_DRAIN_JOBS;
    let env = Env::new().await;
    let vars = env.worker_vars(&[
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "200"),
        ("AI_AGENTS_WORKER_MAX_RETRIES", "5"),
        ("AI_AGENTS_LOG_LEVEL", "info,ai_agents::db=debug"),
    ]);
    let worker = drain_under_way(&env, &vars).await;
    let first = Instant::now();
    let mut ended = Vec::new();
    for _ in 0..3 {
        ended.push(terminate_sessions(&env.app_url).await.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done_then = env.completed().await;
    let took = finishes_cleanly(&env, N, &worker, Duration::from_secs(30), first).await;
    let log = worker.log();
    let (retried, sent_again) = (
        log.matches("will retry").count(),
        log.matches("pooled connection was gone").count(),
    );
    println!(
        "sessions ended three times ({ended:?}), {done_then} of {N} done after the last; all \
         completed once {took:.1?} after the first; {sent_again} calls sent again on another \
         connection, {retried} job attempts retried"
    );
    assert!(done_then < N as i64, "the drain ended too early to matter");
    assert!(
        sent_again > 0,
        "no call met a gone connection: the test proves nothing"
    );
    assert!(
        ended.iter().all(|n| *n > 0),
        "the worker had sessions: {ended:?}"
    );
}

/// Jobs in the drains that a fault interrupts: enough that a fault 40 jobs in finds most of
/// them still queued.
const MID_DRAIN_JOBS: usize = 300;

/// [`MID_DRAIN_JOBS`] jobs of 20 ms each queued in `env`, and a worker started with `vars`
/// draining them; returns once 40 of them are done.
async fn drain_under_way(env: &Env, vars: &HashMap<String, String>) -> Worker {
    env.plan("*", 0, 20).await;
    env.insert_and_enqueue(MID_DRAIN_JOBS).await;
    let worker = Worker::start(vars);
    assert!(
        until_completed(env, 40, Duration::from_secs(20)).await,
        "{}",
        worker.log()
    );
    worker
}

/// [`drain_under_way`] by a worker (settings `extra` on top of the tests') whose PostgreSQL is
/// behind a relay.
async fn draining_through_a_relay(extra: &[(&str, &str)]) -> (Env, Outage, Worker) {
    let env = Env::new().await;
    let relay = Outage::relay(&host_port(&env.app_url)).await;
    let mut vars = env.worker_vars(extra);
    vars.insert(
        "AI_AGENTS_DATABASE_URL".into(),
        via(&env.app_url, relay.addr),
    );
    let worker = drain_under_way(&env, &vars).await;
    (env, relay, worker)
}

/// The drain of `n` jobs ends within `limit`: each row completed exactly once, nothing left in
/// flight, retrying, dead or failed. Returns when the last row completed, counted from `since`.
async fn finishes_cleanly(
    env: &Env,
    n: usize,
    worker: &Worker,
    limit: Duration,
    since: Instant,
) -> Duration {
    assert!(
        until_completed(env, n as i64, limit).await,
        "{:?} {:?}\n{}",
        env.statuses().await,
        env.stats().await,
        worker.log()
    );
    let completed_after = since.elapsed();
    assert!(
        until_idle(env, 0, Duration::from_secs(15)).await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    assert_all_completed_once(env, n, &worker.log()).await;
    assert_eq!(env.statuses().await.get("failed"), None);
    completed_after
}

/// Redis frozen (SIGSTOP) for 3 s in the middle of a drain: reads, settles and heartbeats
/// hang, then time out; the worker must neither lose, double nor dead-letter a job, and
/// finish the drain soon after Redis answers again, the entries of its lost reads included.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_redis_mid_drain_is_ridden_out() {
    const N: usize = MID_DRAIN_JOBS;
    let redis = OwnRedis::start().await;
    let env = Env::on_redis(&redis.url()).await;
    // Commands time out after 1 s: the freeze outlasts them, so reads and settles fail and are
    // retried (a freeze shorter than the timeout only delays them). A read that timed out is
    // still carried out when Redis thaws; its entries must come back well before the reclaim
    // time of 60 s.
    let vars = env.worker_vars(&[
        ("AI_AGENTS_REDIS_POOL_TIMEOUT_SECS", "1"),
        ("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", "60"),
    ]);
    let worker = drain_under_way(&env, &vars).await;

    redis.freeze();
    let frozen_at = env.completed().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done_at_thaw = env.completed().await;
    redis.thaw();
    let thawed = Instant::now();
    assert!(
        done_at_thaw < N as i64,
        "the freeze came too late to matter"
    );

    let done = finishes_cleanly(&env, N, &worker, Duration::from_secs(20), thawed).await;
    eprintln!(
        "Redis frozen for 3 s: {frozen_at} of {N} done at the freeze, {done_at_thaw} at the \
         thaw, all {N} completed once, {done:.1?} after the thaw"
    );
}

/// PostgreSQL fails over in the middle of a drain: every connection the worker has open goes
/// silent for good (the old server neither answers nor resets it), while new connections reach
/// a live server. Nothing on the server ends those calls; the worker's own bound (the pool's
/// wait for a connection, plus `statement_timeout` and a margin) does, the silent connections
/// are closed and replaced,
/// and the drain goes on without losing, doubling or dead-lettering a job. Without that bound
/// the worker would wait on the old connections for as long as the kernel keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_failover_mid_drain_is_ridden_out() {
    const N: usize = MID_DRAIN_JOBS;
    // A call is given up after the pool's wait for a connection and the answer's bound: 3 s +
    // (1 s + 1 s).
    let (env, relay, worker) = draining_through_a_relay(&[
        ("AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS", "3"),
        ("AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS", "1000"),
        ("AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS", "500"),
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "500"),
    ])
    .await;

    relay.strand();
    let failover = Instant::now();
    let done_at_failover = env.completed().await;
    assert!(
        done_at_failover < N as i64,
        "the failover came too late to matter"
    );
    let done = finishes_cleanly(&env, N, &worker, Duration::from_secs(30), failover).await;
    eprintln!(
        "PostgreSQL failover mid-drain: {done_at_failover} of {N} done at the failover, all \
         {N} completed once, {done:.1?} after it"
    );
}

/// A rolling upgrade that starts the new worker before `migrate` has run: the calls it claims
/// and records with do not exist yet (`42883`), which counts as "schema missing", a transient
/// failure. The jobs are retried, not dead-lettered, and complete once the migration is applied
/// (the migration's own down and up files make the older schema and then the newer).
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_started_before_its_migration_waits_for_it() {
    const N: usize = 3;
    let env = Env::new().await;
    sqlx::raw_sql(include_str!(
        "../../migrations/20261201000001_worker_batch_calls.down.sql"
    ))
    .execute(&env.owner)
    .await
    .expect("the schema before the migration");
    env.insert_and_enqueue(N).await;
    let worker = Worker::start(&env.worker_vars(&[("AI_AGENTS_WORKER_RETRY_BASE_MS", "1000")]));
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.stats().await.retrying == N as u64
        })
        .await,
        "the jobs were not retried while the schema was older: {:?}\n{}",
        env.stats().await,
        worker.log()
    );
    let before = env.statuses().await;
    assert_eq!(before.get("pending"), Some(&(N as i64)), "{before:?}");

    sqlx::raw_sql(include_str!(
        "../../migrations/20261201000001_worker_batch_calls.up.sql"
    ))
    .execute(&env.owner)
    .await
    .expect("the migration");
    let migrated = Instant::now();
    assert!(
        until_completed(&env, N as i64, Duration::from_secs(20)).await,
        "{:?} {:?}\n{}",
        env.statuses().await,
        env.stats().await,
        worker.log()
    );
    eprintln!(
        "worker started before its migration: rows {before:?} and {N} jobs retrying while the \
         calls were missing; all {N} completed {:.1?} after the migration",
        migrated.elapsed()
    );
    assert!(
        until_idle(&env, 0, Duration::from_secs(10)).await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    assert_all_completed_once(&env, N, &worker.log()).await;
}

// 8 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ping_answers_only_with_a_worker_running() {
    let env = Env::new().await;
    let worker = Worker::start(&env.worker_vars(&[]));
    assert!(
        eventually(Duration::from_secs(10), || env.worker_alive()).await,
        "worker not up:\n{}",
        worker.log()
    );
    let lonely_prefix = queue_prefix();
    let lonely_vars = test_vars(&env.app_url, &env.redis_url, &lonely_prefix);

    let ping = |vars: HashMap<String, String>| async move {
        let started = Instant::now();
        let output = tokio::time::timeout(
            Duration::from_secs(20),
            command(WORKER, &vars).arg("ping").output(),
        )
        .await
        .expect("ping ends")
        .expect("ping runs");
        (output, started.elapsed())
    };
    let ((answered, fast), (unanswered, slow)) =
        tokio::join!(ping(env.worker_vars(&[])), ping(lonely_vars));

    let stdout = String::from_utf8_lossy(&answered.stdout);
    assert!(answered.status.success(), "{answered:?}\n{}", worker.log());
    assert!(stdout.contains("pong"), "{stdout}");
    assert!(fast < Duration::from_secs(5), "{fast:?}");

    assert!(!unanswered.status.success(), "{unanswered:?}");
    assert!(
        String::from_utf8_lossy(&unanswered.stderr).contains("no worker answered"),
        "{unanswered:?}"
    );
    assert!(slow < Duration::from_secs(12), "{slow:?}");
    eprintln!(
        "ping: answered in {:.2} s; without a worker gave up after {:.2} s",
        fast.as_secs_f64(),
        slow.as_secs_f64()
    );
    // The unanswered ping does not stay behind for a future worker.
    let lonely = Queue::new(redis_pool(&env.redis_url), &lonely_prefix);
    assert_eq!(lonely.stats().await.expect("stats"), QueueStats::default());
}

// 9 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn redelivered_jobs_of_finished_rows_change_nothing() {
    let env = Env::new().await;
    let ids = env.insert(&["once".into(), "given-up".into()]).await;
    let (done, given_up) = (ids[0], ids[1]);
    let mut tx = env.tenant_tx().await;
    sqlx::query(
        "UPDATE enhancement_history
         SET status = 'failed', error_message = 'earlier failure', completed_at = now()
         WHERE id = $1",
    )
    .bind(given_up)
    .execute(&mut *tx)
    .await
    .expect("row failed");
    tx.commit().await.expect("commit");

    let original = enhancement_job(done);
    env.queue.enqueue(&original).await.expect("queued");
    let worker = Worker::start(&env.worker_vars(&[]));
    assert!(
        until_completed(&env, 1, Duration::from_secs(10)).await,
        "{}",
        worker.log()
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    let before = env.rows().await;

    // The same job again (as after a reclaim), a second job for the same row, and a job for
    // the failed row.
    env.queue.enqueue(&original).await.expect("queued");
    env.queue
        .enqueue(&enhancement_job(done))
        .await
        .expect("queued");
    env.queue
        .enqueue(&enhancement_job(given_up))
        .await
        .expect("queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        until_idle(&env, 0, Duration::from_secs(10)).await,
        "the copies were not consumed: {:?}\n{}",
        env.stats().await,
        worker.log()
    );
    assert_eq!(
        env.rows().await,
        before,
        "nothing changed, not even updated_at"
    );
    assert_eq!(env.completions().await, (1, 1, 1));
    let failed = env.row(given_up).await;
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.error_message.as_deref(), Some("earlier failure"));
}

// 10 -----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn queue_stats_count_each_state() {
    // Wide margins between the states: this must hold on a loaded two-core machine too.
    let env = Env::new().await;
    assert_eq!(env.stats().await, QueueStats::default(), "nothing yet");
    env.plan("slow", 0, 5_000).await;
    env.plan("doomed", 1_000, 0).await;
    let ids = env.insert(&["doomed".into(), "quick".into()]).await;
    env.enqueue(&ids).await;
    let slow = env.insert(&["slow".into()]).await;
    assert_eq!(env.stats().await, stats(2, 0, 0, 0), "queued, no worker");

    // The retry waits a minute: long past the end of this test.
    let worker = Worker::start(&env.worker_vars(&[
        ("AI_AGENTS_WORKER_MAX_RETRIES", "1"),
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "60000"),
    ]));
    // quick done, doomed waiting for its retry.
    assert!(
        eventually(Duration::from_secs(15), || async {
            env.stats().await == stats(0, 0, 1, 0)
        })
        .await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    // slow running (5 s in its claim), doomed waiting.
    env.enqueue(&slow).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            env.stats().await == stats(0, 1, 1, 0)
        })
        .await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    // slow done, doomed still waiting.
    assert!(
        eventually(Duration::from_secs(20), || async {
            env.stats().await == stats(0, 0, 1, 0)
        })
        .await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    // A job whose row does not exist is dropped; a bad payload is dead at once.
    env.enqueue(&[Uuid::now_v7()]).await;
    let _: String = env
        .redis(
            redis::cmd("XADD")
                .arg(&env.queue.keys().jobs)
                .arg("*")
                .arg("job")
                .arg(bad_tenant_job()),
        )
        .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            env.stats().await == stats(0, 0, 1, 1)
        })
        .await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    // Its injected failure may also have failed the batch's claim (with quick's) once.
    assert!(env.attempts("doomed").await <= 2);
    assert_eq!(
        env.dead_letters().await.len(),
        1,
        "stats.dead counts the dead-letter stream"
    );
}

// 11 -----------------------------------------------------------------------------------------

/// A job whose row another transaction keeps locked, with a live worker whose reclaim time is
/// only just above the hard limit: every attempt gives up at the hard limit (the server ends
/// its statement), none is reclaimed from the live worker, and the job runs exactly once when
/// the lock is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_blocked_on_a_locked_row_runs_once_with_a_live_worker() {
    let env = Env::new().await;
    env.plan("locked", 0, 0).await;
    let ids = env.insert(&["locked".into()]).await;
    let mut lock = env.tenant_tx().await;
    sqlx::query("SELECT 1 FROM enhancement_history WHERE id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut *lock)
        .await
        .expect("row locked");
    env.enqueue(&ids).await;
    let worker = Worker::start(&env.worker_vars(&[
        ("AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS", "2"),
        ("AI_AGENTS_TASK_TIME_LIMIT_SECS", "3"),
        ("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", "4"),
        // Lock waits end at the hard limit, not earlier.
        ("AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS", "20000"),
        ("AI_AGENTS_WORKER_MAX_RETRIES", "6"),
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", "300"),
    ]));
    tokio::time::sleep(Duration::from_secs(7)).await;
    lock.rollback().await.expect("lock released");
    assert!(
        until_completed(&env, 1, Duration::from_secs(20)).await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    let outcomes = env.queue.outcomes().await.expect("outcomes");
    eprintln!(
        "row locked 7 s, hard limit 3 s, reclaim 4 s: executed {} time(s); outcomes {outcomes:?}",
        env.attempts("locked").await
    );
    assert_eq!(
        env.attempts("locked").await,
        1,
        "the job ran more than once"
    );
    assert_eq!(
        outcomes.get("reclaimed"),
        None,
        "a live worker's job was reclaimed"
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, 1, &worker.log()).await;
}

/// A job that kills its worker every time it runs: each delivery counts, and after
/// `AI_AGENTS_WORKER_MAX_RETRIES + 1` deliveries without an outcome it is dead-lettered and its
/// row `failed`, instead of cycling for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_worker_ends_in_the_dead_letters() {
    let env = Env::new().await;
    env.plan("poison", 0, 3_000).await;
    let ids = env.insert(&["poison".into()]).await;
    env.enqueue(&ids).await;
    let vars = env.worker_vars(&[("AI_AGENTS_WORKER_MAX_RETRIES", "2")]);
    for delivery in 1..=3 {
        let mut worker = Worker::start(&vars);
        let started = eventually(Duration::from_secs(20), || async {
            env.attempts("poison").await >= delivery
        })
        .await;
        if !started {
            let pending: redis::Value = env
                .redis(
                    redis::cmd("XPENDING")
                        .arg(&env.queue.keys().jobs)
                        .arg(GROUP)
                        .arg("-")
                        .arg("+")
                        .arg(10),
                )
                .await;
            panic!(
                "delivery {delivery} never began: {:?} {pending:?} {:?}\n{}",
                env.stats().await,
                env.statuses().await,
                worker.log()
            );
        }
        worker.kill9().await;
        // The killed worker's claim statement sleeps on in its session, holding the row: the
        // next worker, which takes the job back at once (same host), would only wait for it.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let worker = Worker::start(&vars);
    let dead = eventually(Duration::from_secs(25), || async {
        env.stats().await == stats(0, 0, 0, 1) && env.row(ids[0]).await.status == "failed"
    })
    .await;
    assert!(dead, "{:?}\n{}", env.stats().await, worker.log());
    let row = env.row(ids[0]).await;
    let error = row.error_message.expect("an error message");
    eprintln!("kill -9 at each of 3 deliveries (max retries 2): {error}");
    assert!(
        error.contains("delivered 3 times without an outcome"),
        "{error}"
    );
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 4);
    assert_eq!(env.completed().await, 0);
}

/// A row left `processing` under the claim of a delivery no longer in flight (its worker died
/// after the claim committed), whose job then fails for good on its next delivery: the row is
/// failed in the dead delivery's place and the job dead-lettered. Dropping the job instead
/// would leave the row `processing` for ever, with no job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_given_up_on_a_row_a_dead_delivery_holds_fails_the_row() {
    let env = Env::new().await;
    let ids = env.insert(&["held".into()]).await;
    let mut tx = env.tenant_tx().await;
    sqlx::query(
        "UPDATE enhancement_history SET status = 'processing', claim = '1-0' WHERE id = $1",
    )
    .bind(ids[0])
    .execute(&mut *tx)
    .await
    .expect("claimed by a dead delivery");
    tx.commit().await.expect("commit");
    // Every claim of the row fails (transiently), and this delivery is the job's last attempt.
    env.plan("held", 100, 0).await;
    let job = enhancement_job(ids[0])
        .next_attempt()
        .next_attempt()
        .next_attempt();
    env.queue.enqueue(&job).await.expect("queued");
    let worker = Worker::start(&env.worker_vars(&[("AI_AGENTS_WORKER_MAX_RETRIES", "3")]));
    let settled = eventually(Duration::from_secs(15), || async {
        env.stats().await == stats(0, 0, 0, 1) && env.row(ids[0]).await.status == "failed"
    })
    .await;
    let row = env.row(ids[0]).await;
    eprintln!(
        "row held by a dead delivery, job given up: row {}, {:?}, queue {:?}",
        row.status,
        row.error_message,
        env.stats().await
    );
    assert!(settled, "{:?}\n{}", env.stats().await, worker.log());
    let error = row.error_message.expect("an error message");
    assert!(error.contains("gave up after 4 attempts"), "{error}");
}

/// The API died between committing a row and queueing its job: the row is `pending` with no
/// job. The sweeper queues it again, and it completes once.
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_row_whose_job_was_lost_is_queued_again() {
    let env = Env::new().await;
    let lost = env.insert(&["lost".into()]).await;
    // A row whose job is queued, and which must not be queued twice.
    env.insert_and_enqueue(1).await;
    let started = Instant::now();
    let worker = Worker::start(&env.worker_vars(&[("AI_AGENTS_WORKER_ORPHAN_AFTER_SECS", "1")]));
    assert!(
        until_completed(&env, 2, Duration::from_secs(30)).await,
        "{:?} {:?}\n{}",
        env.statuses().await,
        env.stats().await,
        worker.log()
    );
    eprintln!(
        "orphaned pending row completed {:.1} s after the worker started",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(env.row(lost[0]).await.status, "completed");
    assert!(
        worker
            .log()
            .contains("pending row without a job: queued again")
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);
    assert_all_completed_once(&env, 2, &worker.log()).await;
}

/// A `pending` row whose job waits in the retry schedule is no orphan: the sweep that queues
/// again a row whose job is really gone leaves it to its retry (a second copy would start the
/// job's attempt count over).
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_row_whose_job_waits_for_a_retry_is_not_swept() {
    let env = Env::new().await;
    let rows = env.insert(&["waits".into(), "lost".into()]).await;
    let (waits, lost) = (rows[0], rows[1]);
    // Its second attempt, due in an hour.
    let job = enhancement_job(waits).next_attempt();
    let due = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let _: () = env
        .redis(
            redis::cmd("ZADD")
                .arg(&env.queue.keys().retry)
                .arg(due)
                .arg(job.encode()),
        )
        .await;
    let worker = Worker::start(&env.worker_vars(&[("AI_AGENTS_WORKER_ORPHAN_AFTER_SECS", "1")]));
    assert!(
        eventually(Duration::from_secs(30), || async {
            env.row(lost).await.status == "completed"
        })
        .await,
        "{:?}\n{}",
        env.statuses().await,
        worker.log()
    );
    // Both rows were equally stale for the sweep that queued `lost` again; let it finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let swept = worker
        .log()
        .matches("pending row without a job: queued again")
        .count();
    let stats = env.stats().await;
    eprintln!(
        "lost row completed; the retrying row: {}, queue {stats:?}, rows queued again: {swept}",
        env.row(waits).await.status
    );
    assert_eq!(env.row(waits).await.status, "pending");
    assert_eq!(stats.retrying, 1, "{stats:?}");
    assert_eq!(stats.pending + stats.in_flight, 0, "{stats:?}");
    assert_eq!(swept, 1, "{}", worker.log());
}

/// A job put back into the stream after its row was last written (a promoted retry, a dead
/// worker's job requeued) has an entry newer than the row by more than the margin, and may be
/// the oldest in the stream: its row is no orphan all the same, while a row whose job is gone
/// is. The sweep is called as the worker calls it, with no worker to take the jobs away.
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_row_whose_job_came_back_with_a_newer_entry_is_not_swept() {
    let env = Env::new().await;
    let rows = env.insert(&["came back".into(), "lost".into()]).await;
    let (came_back, lost) = (rows[0], rows[1]);
    // Both rows are older than the margin (1 s) when the job comes back.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = env.row(came_back).await.updated_at;
    env.queue
        .enqueue(&enhancement_job(came_back).next_attempt())
        .await
        .expect("queued");
    let pool = sqlx::PgPool::connect(&env.app_url).await.expect("app pool");
    let swept = sweeper::sweep(
        &pool,
        &env.queue,
        "sweep-test",
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await
    .expect("swept");
    let queued: Vec<Uuid> = env
        .queue
        .peek(10)
        .await
        .expect("peek")
        .into_iter()
        .filter_map(|job| match job.kind {
            JobKind::Enhancement { enhancement_id, .. } => Some(enhancement_id),
            JobKind::Ping { .. } => None,
        })
        .collect();
    eprintln!("rows queued again: {swept}; jobs in the stream: {queued:?}");
    assert_eq!(swept, 1);
    assert_eq!(queued.iter().filter(|id| **id == came_back).count(), 1);
    assert_eq!(queued.iter().filter(|id| **id == lost).count(), 1);
    assert_eq!(env.row(came_back).await.updated_at, before);
}

/// A ping names the list it is answered on; a worker answers only on a ping key of its own
/// deployment, so a crafted ping cannot touch (or expire) any other key.
#[tokio::test(flavor = "multi_thread")]
async fn a_ping_cannot_name_a_key_outside_its_namespace() {
    let env = Env::new().await;
    let dead = env.queue.keys().dead.clone();
    // A key of the deployment's namespace that no worker ever touches.
    let victim = format!("{}:victim", env.prefix);
    let _: () = env
        .redis(redis::cmd("SET").arg(&victim).arg("precious"))
        .await;
    for reply_to in [victim.clone(), dead.clone(), "elsewhere:ping:x".to_owned()] {
        env.queue
            .enqueue(&Job::new(JobKind::Ping { reply_to }))
            .await
            .expect("queued");
    }
    let worker = Worker::start(&env.worker_vars(&[]));
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.stats().await.dead == 3
        })
        .await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    for key in [&victim, &dead] {
        let ttl: i64 = env.redis(redis::cmd("PTTL").arg(key)).await;
        assert_eq!(ttl, -1, "{key} got an expiry (or vanished)");
    }
    let value: String = env.redis(redis::cmd("GET").arg(&victim)).await;
    assert_eq!(value, "precious", "the victim key was written");
    let letters = env.dead_letters().await;
    assert!(
        letters
            .iter()
            .all(|l| l.error.contains("ping key of this deployment")),
        "{letters:?}"
    );
}

/// `ai-agents-worker dead list | retry | purge`, and the dead-letter cap.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_can_be_listed_retried_and_purged() {
    let env = Env::new().await;
    env.plan("doomed", 1, 0).await;
    let ids = env.insert(&["doomed".into()]).await;
    env.enqueue(&ids).await;
    let vars = env.worker_vars(&[("AI_AGENTS_WORKER_MAX_RETRIES", "0")]);
    let mut worker = Worker::start(&vars);
    assert!(
        until_idle(&env, 1, Duration::from_secs(10)).await,
        "{:?}\n{}",
        env.stats().await,
        worker.log()
    );
    worker.kill9().await;
    assert_eq!(env.row(ids[0]).await.status, "failed");

    let dead = |args: &[&str]| {
        let mut command = command(WORKER, &vars);
        command.arg("dead").args(args);
        async move {
            let output = command.output().await.expect("runs");
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        }
    };
    let (code, listed) = dead(&["list"]).await;
    assert_eq!(code, 0, "{listed}");
    eprintln!("dead list:\n{listed}");
    assert!(listed.contains("injected failure"), "{listed}");
    assert!(listed.contains("1 dead letter(s) shown"), "{listed}");
    let id = listed.split('\t').next().expect("an id").to_owned();

    let (code, out) = dead(&["purge", "--older-than", "1d"]).await;
    assert_eq!((code, out.trim()), (0, "0 dead letter(s) deleted"));
    let (code, out) = dead(&["retry", &id]).await;
    eprintln!("dead retry {id}: {}", out.trim());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 dead letter(s) queued again"), "{out}");
    assert_eq!(env.row(ids[0]).await.status, "pending", "the row re-opened");
    let (code, out) = dead(&["retry", &id]).await;
    assert_ne!(code, 0, "a second retry of the same letter: {out}");

    // The injected failure happened once: the retried job now completes.
    let worker = Worker::start(&vars);
    assert!(
        until_completed(&env, 1, Duration::from_secs(10)).await,
        "{}",
        worker.log()
    );
    assert!(until_idle(&env, 0, Duration::from_secs(5)).await);

    // Garbage fills the dead letters up to about the cap, never beyond a stream node.
    let capped = env.worker_vars(&[("AI_AGENTS_DEAD_LETTER_MAX", "10")]);
    drop(worker);
    let jobs = env.queue.keys().jobs.clone();
    for i in 0..250 {
        let _: String = env
            .redis(
                redis::cmd("XADD")
                    .arg(&jobs)
                    .arg("*")
                    .arg("job")
                    .arg(format!("garbage {i}")),
            )
            .await;
    }
    let worker = Worker::start(&capped);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let now = env.stats().await;
            now.pending == 0 && now.in_flight == 0
        })
        .await,
        "{}",
        worker.log()
    );
    let kept = env.stats().await.dead;
    eprintln!("250 dead letters with AI_AGENTS_DEAD_LETTER_MAX=10: {kept} kept");
    assert!(kept <= 10 + 100, "{kept}");
    let (code, out) = dead(&["purge"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("{kept} dead letter(s) deleted"));
    assert_eq!(env.stats().await.dead, 0);
}
