//! The commands of `ai-agents-worker`: run, ping, and the dead-letter operations.

use std::time::Duration;

use crate::{
    boot::{BoxError, failed},
    config::Config,
    db::probe::Probe,
    queue::{Job, JobKind, Queue, RedisPool},
    shutdown,
    worker::{
        self,
        dead_letters::{self, Retried},
        metrics_server,
    },
};

/// How long `ping` waits for a worker's answer.
pub const PING_WAIT: Duration = Duration::from_secs(10);

/// Consumes jobs until SIGTERM/SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), BoxError> {
    let stop = shutdown::listen();
    if let Some(addr) = config.worker.metrics_addr {
        let probes = metrics_server::Probes {
            database: Probe::new(&config.database)?,
            redis: RedisPool::new(&config.redis)?,
        };
        metrics_server::spawn(addr, probes).await.map_err(failed(
            "cannot serve metrics on AI_AGENTS_WORKER_METRICS_ADDR",
        ))?;
    }
    Ok(worker::run(&config, stop).await?)
}

/// The queue of `config`.
fn queue(config: &Config) -> Result<Queue, BoxError> {
    let redis = RedisPool::new(&config.redis)?;
    Ok(Queue::new(redis, &config.redis.queue_prefix))
}

/// Queues a ping and waits up to [`PING_WAIT`] for the answer, on a list of its own; prints it.
pub async fn ping(config: Config) -> Result<(), BoxError> {
    let queue = queue(&config)?;
    let reply_to = queue.keys().ping_reply();
    let entry = queue
        .enqueue(&Job::new(JobKind::Ping {
            reply_to: reply_to.clone(),
        }))
        .await
        .map_err(failed("cannot queue the ping"))?;
    let answer = async {
        let mut conn = queue.redis().dedicated().await?;
        redis::cmd("BLPOP")
            .arg(&reply_to)
            .arg(PING_WAIT.as_secs_f64())
            .query_async::<Option<(String, String)>>(&mut conn)
            .await
    };
    let failure: BoxError =
        match tokio::time::timeout(PING_WAIT + Duration::from_secs(1), answer).await {
            Ok(Ok(Some((_, text)))) => {
                println!("{text}");
                return Ok(());
            }
            Ok(Err(e)) => failed("Redis error while waiting")(e).into(),
            _ => format!("no worker answered within {} s", PING_WAIT.as_secs()).into(),
        };
    // Nobody took it: it must not answer a later worker's ping check.
    let _ = queue.withdraw(&entry).await;
    Err(failure)
}

/// Prints the newest `limit` dead letters, one per line: id, time, deliveries, error, job.
pub async fn dead_list(config: Config, limit: usize) -> Result<(), BoxError> {
    let letters = queue(&config)?
        .dead_letters(limit)
        .await
        .map_err(failed("cannot read the dead letters"))?;
    for letter in &letters {
        println!(
            "{}\t{}\t{} deliveries\t{}\t{}",
            letter.id, letter.failed_at, letter.attempts, letter.error, letter.job
        );
    }
    println!("{} dead letter(s) shown", letters.len());
    Ok(())
}

/// Queues the dead letter `id` (or all of them) again, re-opening its row; fails if a letter
/// was kept, or if the one asked for does not exist.
pub async fn dead_retry(config: Config, id: Option<String>) -> Result<(), BoxError> {
    let queue = queue(&config)?;
    let pool = crate::db::connect_lazy(&config.database)?;
    let outcomes = match id {
        Some(id) => {
            let outcome = dead_letters::retry(&queue, &pool, &id).await?;
            vec![(id, outcome)]
        }
        None => dead_letters::retry_all(&queue, &pool).await?,
    };
    let (mut queued, mut kept, mut missing) = (0, 0, 0);
    for (id, outcome) in &outcomes {
        match outcome {
            Retried::Queued => queued += 1,
            Retried::Gone => {
                println!("{id}: no such dead letter");
                missing += 1;
            }
            Retried::Kept(reason) => {
                println!("{id}: kept: {reason}");
                kept += 1;
            }
        }
    }
    println!("{queued} dead letter(s) queued again");
    if kept > 0 {
        Err(format!("{kept} dead letter(s) kept").into())
    } else if missing > 0 && outcomes.len() == 1 {
        Err("no such dead letter".into())
    } else {
        Ok(())
    }
}

/// Deletes the dead letters (all, or those older than `age`).
pub async fn dead_purge(config: Config, age: Option<Duration>) -> Result<(), BoxError> {
    let deleted = queue(&config)?
        .purge_dead(age)
        .await
        .map_err(failed("cannot purge the dead letters"))?;
    println!("{deleted} dead letter(s) deleted");
    Ok(())
}
