//! The worker harness: a real `ai-agents-worker` process ([`Worker`]) against real PostgreSQL
//! and Redis, no mocks, and the test's view of its database and queue ([`Env`]).
//!
//! Every test gets its own database (migrated by the owner, used by the worker as the application
//! role) and its own Redis key prefix. Failures and slowness are injected by triggers the test
//! installs as the owner in its own database:
//!
//! * `test_on_processing` fires when a row moves to `processing` (the start of every attempt).
//!   Per ticket it can sleep, count the attempt in a sequence (`attempts_TICKET`; sequences are
//!   not transactional, so a counted attempt stays counted when the trigger then fails it) and
//!   raise SQLSTATE 40001 (serialization failure, a transient error) for the first
//!   `fail_times` attempts. The ticket `*` applies its sleep to every row.
//! * `test_count_completion` records every transition to `completed` in `test_completions`, so
//!   "exactly once" is counted by the database itself.

use std::{
    collections::HashMap,
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::Duration,
};

use ai_agents::queue::{DeadLetter, Job, JobKind, Queue, QueueStats};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Child,
};
use uuid::Uuid;

use super::{
    TestApp, TestDb, WORKER, command, eventually, process::terminate, queue_prefix, redis_pool,
    redis_url, signal, test_vars,
};

/// The tenant of every row and job the harness makes.
pub const TENANT: &str = "acme";

/// The probes every test database gets (see the module documentation).
const PROBES: &str = r#"
CREATE TABLE test_plan (
    ticket_id  text    PRIMARY KEY,
    fail_times integer NOT NULL DEFAULT 0,
    sleep_ms   integer NOT NULL DEFAULT 0
);
CREATE TABLE test_completions (
    enhancement_id uuid        NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION test_on_processing() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    planned test_plan;
    attempt bigint;
BEGIN
    SELECT * INTO planned FROM test_plan
    WHERE ticket_id IN (NEW.ticket_id, '*')
    ORDER BY ticket_id = '*'
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    -- Counted before the sleep: an attempt whose worker is killed while it sleeps counts.
    IF planned.ticket_id <> '*' THEN
        attempt := nextval(format('%I', 'attempts_' || planned.ticket_id)::regclass);
    END IF;
    IF planned.sleep_ms > 0 THEN
        PERFORM pg_sleep(planned.sleep_ms / 1000.0);
    END IF;
    IF planned.ticket_id <> '*' THEN
        IF attempt <= planned.fail_times THEN
            RAISE EXCEPTION 'injected failure % of ticket %', attempt, NEW.ticket_id
                USING ERRCODE = '40001';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER test_on_processing
    BEFORE UPDATE ON enhancement_history
    FOR EACH ROW WHEN (NEW.status = 'processing')
    EXECUTE FUNCTION test_on_processing();

CREATE FUNCTION test_count_completion() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO test_completions (enhancement_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER test_count_completion
    AFTER UPDATE ON enhancement_history
    FOR EACH ROW WHEN (NEW.status = 'completed' AND OLD.status IS DISTINCT FROM 'completed')
    EXECUTE FUNCTION test_count_completion();
"#;

/// A row of `enhancement_history`, as the tests look at it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Row {
    /// The enhancement's id.
    pub id: Uuid,
    /// Its ticket (the key of the probes' plan).
    pub ticket_id: String,
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Set when it completed.
    pub processing_time_ms: Option<i32>,
    /// Set when it completed or failed.
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Compared before and after, to see that nothing touched the row.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A test's database, queue and worker settings.
pub struct Env {
    /// The database as the application role (what the worker connects with).
    pub app_url: String,
    /// A pool as the owner, for the probes and for looking behind row-level security.
    pub owner: PgPool,
    /// The key prefix of the worker's queue.
    pub prefix: String,
    /// The Redis the worker uses.
    pub redis_url: String,
    /// The worker's queue, for inspection.
    pub queue: Queue,
}

impl Env {
    /// A fresh database with the probes and the tenant, on the shared Redis.
    pub async fn new() -> Self {
        Self::on_redis(&redis_url()).await
    }

    /// A fresh database with the probes and the tenant, on `redis_url`.
    pub async fn on_redis(redis_url: &str) -> Self {
        let db = TestDb::new().await;
        let prefix = queue_prefix();
        let env = Self {
            owner: db.owner_pool().await,
            app_url: db.app_url.clone(),
            queue: Queue::new(redis_pool(redis_url), &prefix),
            prefix,
            redis_url: redis_url.to_owned(),
        };
        env.install_probes().await;
        env.insert_tenant().await;
        env
    }

    /// The database and prefix of a running API (its tenants are created through HTTP).
    pub async fn of_app(app: &TestApp) -> Self {
        let env = Self {
            owner: app.db.owner_pool().await,
            app_url: app.db.app_url.clone(),
            prefix: app.prefix.clone(),
            redis_url: redis_url(),
            queue: app.queue.clone(),
        };
        env.install_probes().await;
        env
    }

    /// Installs [`PROBES`] as the owner.
    async fn install_probes(&self) {
        sqlx::raw_sql(PROBES)
            .execute(&self.owner)
            .await
            .expect("probes install");
    }

    /// Inserts [`TENANT`] (its secrets are never read by the worker).
    async fn insert_tenant(&self) {
        let mut tx = self.tenant_tx().await;
        sqlx::query(
            "INSERT INTO tenant_configs (tenant_id, name, servicedesk_url,
                 servicedesk_api_key_encrypted, webhook_signing_secret_encrypted)
             VALUES ($1, 'Acme', 'https://desk.example.com', 'v1:unused', 'v1:unused')",
        )
        .bind(TENANT)
        .execute(&mut *tx)
        .await
        .expect("tenant inserted");
        tx.commit().await.expect("commit");
    }

    /// A transaction of the owner in which row-level security admits the tenant's rows.
    pub async fn tenant_tx(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.owner.begin().await.expect("begin");
        sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
            .bind(TENANT)
            .execute(&mut *tx)
            .await
            .expect("tenant scope");
        tx
    }

    /// Makes the first `fail_times` attempts of `ticket` fail transiently, each after `sleep_ms`,
    /// and counts its attempts.
    pub async fn plan(&self, ticket: &str, fail_times: i32, sleep_ms: i32) {
        sqlx::query("INSERT INTO test_plan (ticket_id, fail_times, sleep_ms) VALUES ($1, $2, $3)")
            .bind(ticket)
            .bind(fail_times)
            .bind(sleep_ms)
            .execute(&self.owner)
            .await
            .expect("plan stored");
        if ticket != "*" {
            sqlx::query(AssertSqlSafe(format!(
                r#"CREATE SEQUENCE "attempts_{ticket}""#
            )))
            .execute(&self.owner)
            .await
            .expect("attempt counter");
        }
    }

    /// Attempts made so far on a planned ticket.
    pub async fn attempts(&self, ticket: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            r#"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "attempts_{ticket}""#
        )))
        .fetch_one(&self.owner)
        .await
        .expect("attempt counter")
    }

    /// Stores `pending` rows for `tickets` (as the API does, without queueing); their ids.
    pub async fn insert(&self, tickets: &[String]) -> Vec<Uuid> {
        let ids: Vec<Uuid> = tickets.iter().map(|_| Uuid::now_v7()).collect();
        let mut tx = self.tenant_tx().await;
        sqlx::query(
            "INSERT INTO enhancement_history (id, tenant_id, ticket_id, status)
             SELECT id, $2, ticket, 'pending' FROM UNNEST($1::uuid[], $3::text[]) AS t(id, ticket)",
        )
        .bind(&ids)
        .bind(TENANT)
        .bind(tickets)
        .execute(&mut *tx)
        .await
        .expect("rows inserted");
        tx.commit().await.expect("commit");
        ids
    }

    /// `n` rows with tickets `T-0` … and their jobs queued.
    pub async fn insert_and_enqueue(&self, n: usize) -> Vec<Uuid> {
        let tickets: Vec<String> = (0..n).map(|i| format!("T-{i}")).collect();
        let ids = self.insert(&tickets).await;
        self.enqueue(&ids).await;
        ids
    }

    /// Queues the jobs of `ids`.
    pub async fn enqueue(&self, ids: &[Uuid]) {
        for id in ids {
            self.queue
                .enqueue(&enhancement_job(*id))
                .await
                .expect("job queued");
        }
    }

    /// Every row, by id.
    pub async fn rows(&self) -> Vec<Row> {
        let mut tx = self.tenant_tx().await;
        let rows = sqlx::query_as(
            "SELECT id, ticket_id, status, error_message, processing_time_ms, completed_at,
                    updated_at
             FROM enhancement_history ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await
        .expect("rows");
        tx.commit().await.expect("commit");
        rows
    }

    /// The row `id`.
    pub async fn row(&self, id: Uuid) -> Row {
        self.rows()
            .await
            .into_iter()
            .find(|r| r.id == id)
            .expect("row exists")
    }

    /// Rows per status.
    pub async fn statuses(&self) -> HashMap<String, i64> {
        let mut tx = self.tenant_tx().await;
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM enhancement_history GROUP BY status")
                .fetch_all(&mut *tx)
                .await
                .expect("counts");
        tx.commit().await.expect("commit");
        counts.into_iter().collect()
    }

    /// Transitions to `completed` recorded by the trigger: (all, distinct rows, most per row).
    pub async fn completions(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT count(*),
                    count(DISTINCT enhancement_id),
                    coalesce((SELECT max(n) FROM (SELECT count(*) AS n FROM test_completions
                                                  GROUP BY enhancement_id) per_row), 0)
             FROM test_completions",
        )
        .fetch_one(&self.owner)
        .await
        .expect("completions")
    }

    /// Transitions to `completed` recorded so far.
    pub async fn completed(&self) -> i64 {
        self.completions().await.0
    }

    /// The queue's statistics.
    pub async fn stats(&self) -> QueueStats {
        self.queue.stats().await.expect("queue stats")
    }

    /// The dead letters (up to 100).
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.queue.dead_letters(100).await.expect("dead letters")
    }

    /// Worker variables: the test configuration, quick retries and reclaim, then `extra`.
    pub fn worker_vars(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars = test_vars(&self.app_url, &self.redis_url, &self.prefix);
        let defaults = [
            ("AI_AGENTS_WORKER_CONCURRENCY", "4"),
            ("AI_AGENTS_DATABASE_POOL_SIZE", "8"),
            ("AI_AGENTS_WORKER_MAX_RETRIES", "3"),
            ("AI_AGENTS_WORKER_RETRY_BASE_MS", "200"),
            ("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", "12"),
            ("AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS", "8"),
            ("AI_AGENTS_TASK_TIME_LIMIT_SECS", "10"),
            // The tests' slow rows sleep up to 5 s in one statement.
            ("AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS", "20000"),
        ];
        for (name, value) in defaults.iter().chain(extra) {
            vars.insert((*name).to_owned(), (*value).to_owned());
        }
        vars
    }

    /// Runs one Redis command on the test's connection.
    pub async fn redis<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.queue.redis().get();
        cmd.query_async(&mut conn).await.expect("redis command")
    }

    /// Whether a worker's heartbeat is in Redis.
    pub async fn worker_alive(&self) -> bool {
        let keys: Vec<String> = self
            .redis(redis::cmd("KEYS").arg(format!("{}:alive:*", self.prefix)))
            .await;
        !keys.is_empty()
    }
}

/// The job the API queues for the enhancement `id` of [`TENANT`].
pub fn enhancement_job(id: Uuid) -> Job {
    Job::new(JobKind::Enhancement {
        enhancement_id: id,
        tenant_id: ai_agents::domain::TenantId::parse(TENANT).expect("valid tenant id"),
    })
}

/// The JSON of an enhancement job whose tenant id can never be valid (no `Job` holds one).
pub fn bad_tenant_job() -> String {
    enhancement_job(Uuid::now_v7())
        .encode()
        .replace(&format!("\"{TENANT}\""), "\"Not A Tenant!\"")
}

/// Queue statistics, in the order of their fields.
pub fn stats(pending: u64, in_flight: u64, retrying: u64, dead: u64) -> QueueStats {
    QueueStats {
        pending,
        in_flight,
        retrying,
        dead,
    }
}

/// A running `ai-agents-worker` whose output is collected (so it never blocks on a full pipe).
pub struct Worker {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Worker {
    /// Starts `ai-agents-worker` with `vars` (see [`command`]).
    pub fn start(vars: &HashMap<String, String>) -> Self {
        let mut child = command(WORKER, vars).spawn().expect("worker starts");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(collect(out, Arc::clone(&log)));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect(err, Arc::clone(&log)));
        }
        Self { child, log }
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("worker still running");
        assert!(signal(pid, name), "kill -{name} {pid} failed");
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        self.signal("KILL");
        self.exit(Duration::from_secs(5))
            .await
            .expect("a killed worker exits");
    }

    /// Waits up to `limit` for the process to end.
    pub async fn exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait for worker"))
    }

    /// The last lines of its output, for failure messages.
    pub fn log(&self) -> String {
        let log = self.log.lock().expect("log lock");
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }
}

impl Drop for Worker {
    /// SIGTERM rather than `kill_on_drop`'s SIGKILL, so the worker writes its coverage profile;
    /// the test's grace period is 5 s.
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(8));
    }
}

/// Appends the lines of `reader` to `log` until it ends.
async fn collect(reader: impl AsyncRead + Unpin, log: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut log = log.lock().expect("log lock");
        log.push_str(&line);
        log.push('\n');
    }
}

/// Waits until `n` transitions to `completed` were recorded, or `limit` passes.
pub async fn until_completed(env: &Env, n: i64, limit: Duration) -> bool {
    eventually(limit, || async { env.completed().await >= n }).await
}

/// Waits until the queue is empty (nothing pending, in flight or retrying) with `dead` letters.
pub async fn until_idle(env: &Env, dead: u64, limit: Duration) -> bool {
    eventually(limit, || async {
        env.stats().await == stats(0, 0, 0, dead)
    })
    .await
}

/// Every row completed exactly once, with its processing time and completion time.
pub async fn assert_all_completed_once(env: &Env, n: usize, worker_log: &str) {
    let rows = env.rows().await;
    assert_eq!(rows.len(), n);
    let unfinished: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.status != "completed" || r.processing_time_ms.is_none() || r.completed_at.is_none()
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} rows not completed, e.g. {:?}\n{worker_log}",
        unfinished.len(),
        unfinished.first()
    );
    let expected = i64::try_from(n).expect("small n");
    assert_eq!(
        env.completions().await,
        (expected, expected, 1),
        "each row must move to `completed` exactly once"
    );
}
