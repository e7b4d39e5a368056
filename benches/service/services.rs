//! The bench's own PostgreSQL and Redis (through `nix/dev-services.sh`, as a developer starts
//! them), the run's database, and connections to both for the in-process loops.

use std::{path::PathBuf, process::Stdio, time::Duration};

use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use sqlx::{
    Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{DB_POOL, Res, procfs::children_of, settings::Settings};

/// PostgreSQL and Redis of the bench's own, started with `nix/dev-services.sh` and stopped
/// (by the same script) when this is dropped.
pub struct Services {
    script: PathBuf,
    envs: Vec<(String, String)>,
    pg_data: PathBuf,
    redis_pidfile: PathBuf,
}

impl Services {
    /// Starts both (a no-op for one already running in the same state directory).
    pub fn start(s: &Settings) -> Res<Self> {
        std::fs::create_dir_all(&s.state)?;
        std::fs::create_dir_all(s.log_dir())?;
        let services = Self {
            script: s.root.join("nix/dev-services.sh"),
            envs: vec![
                ("AI_AGENTS_DEV_DIR".into(), s.state.display().to_string()),
                ("AI_AGENTS_DEV_PG_PORT".into(), s.pg_port.to_string()),
                ("AI_AGENTS_DEV_REDIS_PORT".into(), s.redis_port.to_string()),
            ],
            pg_data: s.state.join("postgres"),
            redis_pidfile: s.state.join("redis/redis.pid"),
        };
        let output = services.script_command("start").output()?;
        if !output.status.success() {
            return Err(format!(
                "nix/dev-services.sh start failed:\n{}\n(state in {}; remove it to start afresh)",
                String::from_utf8_lossy(&output.stderr),
                s.state.display()
            )
            .into());
        }
        Ok(services)
    }

    fn script_command(&self, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(&self.script)
            .arg(command)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// The postmaster and its children (backends), by pid.
    pub fn postgres_pids(&self) -> Vec<u32> {
        let Some(postmaster) = std::fs::read_to_string(self.pg_data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        pids
    }

    /// The redis-server, by pid.
    pub fn redis_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.redis_pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        match self.script_command("stop").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "bench: nix/dev-services.sh stop failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("bench: cannot run nix/dev-services.sh stop: {e}"),
        }
    }
}

/// A fresh database `db_name`, created by the owner (the binary migrates it); the server's
/// version.
pub async fn create_database(s: &Settings, db_name: &str) -> Res<String> {
    let mut admin = PgConnection::connect(&s.owner_url("ai_agents")).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"CREATE DATABASE "{db_name}""#
        )))
        .await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut admin)
        .await?;
    admin.close().await.ok();
    Ok(version)
}

/// Drops the run's database and deletes its Redis keys (`bench-RUN_ID-*`), as far as it can.
pub async fn cleanup(s: &Settings, run_id: &str, db_name: &str) {
    if let Ok(mut admin) = PgConnection::connect(&s.owner_url("ai_agents")).await {
        // The owner may not terminate the application role's sessions (`WITH (FORCE)` is
        // refused), so wait for the dropped pools' connections to go away.
        let drop = format!(r#"DROP DATABASE IF EXISTS "{db_name}""#);
        for attempt in 1..=20 {
            match admin.execute(sqlx::AssertSqlSafe(drop.clone())).await {
                Ok(_) => break,
                Err(e) if attempt == 20 => eprintln!("bench: could not drop {db_name}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        admin.close().await.ok();
    }
    if let Ok(mut conn) = redis_conn(s).await {
        let mut cursor = 0_u64;
        loop {
            let reply: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("bench-{run_id}-*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let Ok((next, keys)) = reply else { break };
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// A pool on `db` as the application role, as large as the API's.
pub async fn app_pool(s: &Settings, db: &str) -> Res<PgPool> {
    let options: PgConnectOptions = s.app_url(db).parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(DB_POOL)
        .min_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// A Redis connection without a response timeout (blocking reads wait as long as they ask).
pub async fn redis_conn(s: &Settings) -> Res<MultiplexedConnection> {
    let client = redis::Client::open(s.redis_url())?;
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The length of the stream `key`.
pub async fn redis_xlen(s: &Settings, key: &str) -> Res<u64> {
    let mut conn = redis_conn(s).await?;
    Ok(redis::cmd("XLEN").arg(key).query_async(&mut conn).await?)
}
