//! `ai-agents-worker`: consumes jobs until SIGTERM/SIGINT, or checks that some worker does.
//!
//! ```text
//! ai-agents-worker                      consume jobs until SIGTERM/SIGINT (exit 0 after draining)
//! ai-agents-worker ping                 queue a ping job, wait up to 10 s for a worker's answer
//! ai-agents-worker dead list [--limit N]        the newest N dead letters (default 20)
//! ai-agents-worker dead retry ID|--all          queue dead letters again (rows re-opened)
//! ai-agents-worker dead purge [--older-than D]  delete dead letters (all, or older than D:
//!                                               30s, 15m, 12h, 7d)
//! ai-agents-worker --version            print the version (needs no configuration)
//! ```

use std::{process::ExitCode, time::Duration};

use ai_agents::{
    config::{Config, Requirements},
    queue::{Job, JobKind, Queue, RedisPool},
    shutdown, telemetry,
    worker::{
        self,
        dead_letters::{self, Retried},
    },
};
use tokio_util::sync::CancellationToken;

const NAME: &str = "ai-agents-worker";
const PING_WAIT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: ai-agents-worker [ping | dead list [--limit N] | dead retry ID|--all \
                     | dead purge [--older-than D] | --version]";

/// What the command line asks for.
enum Command {
    Run,
    Ping,
    DeadList(usize),
    DeadRetry(Option<String>),
    DeadPurge(Option<Duration>),
}

fn parse(args: &[&str]) -> Option<Command> {
    Some(match args {
        [] => Command::Run,
        ["ping"] => Command::Ping,
        ["dead", "list"] => Command::DeadList(20),
        ["dead", "list", "--limit", n] => Command::DeadList(n.parse().ok().filter(|n| *n > 0)?),
        ["dead", "retry", "--all"] => Command::DeadRetry(None),
        ["dead", "retry", id] if !id.starts_with('-') => Command::DeadRetry(Some((*id).to_owned())),
        ["dead", "purge"] => Command::DeadPurge(None),
        ["dead", "purge", "--older-than", age] => {
            Command::DeadPurge(Some(dead_letters::parse_age(age)?))
        }
        _ => return None,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let command = match args.as_slice() {
        ["--version" | "-V" | "version"] => {
            println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        args => match parse(args) {
            Some(command) => command,
            None => {
                eprintln!("{NAME}: unknown arguments\n{USAGE}");
                return ExitCode::from(2);
            }
        },
    };
    let requirements = match command {
        Command::Run | Command::DeadRetry(_) => Requirements::Worker,
        Command::Ping | Command::DeadList(_) | Command::DeadPurge(_) => Requirements::Ping,
    };
    let config = match Config::load(requirements) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(78);
        }
    };
    ai_agents::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{NAME}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Run => run_worker(&config).await,
            Command::Ping => run_ping(&config).await,
            Command::DeadList(limit) => dead_list(&config, limit).await,
            Command::DeadRetry(id) => dead_retry(&config, id.as_deref()).await,
            Command::DeadPurge(age) => dead_purge(&config, age).await,
        }
    })
}

/// Consumes jobs until SIGTERM/SIGINT.
async fn run_worker(config: &Config) -> ExitCode {
    telemetry::init("worker", config);
    if let Some(addr) = config.worker.metrics_addr
        && let Err(e) = ai_agents::worker::metrics_server::spawn(addr).await
    {
        eprintln!("{NAME}: cannot serve metrics on AI_AGENTS_WORKER_METRICS_ADDR: {e}");
        return ExitCode::FAILURE;
    }
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        trigger.cancel();
    });
    match worker::run(config, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = &e as &dyn std::error::Error, "worker failed");
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The queue of `config`, or the exit code of a bad Redis URL.
fn queue(config: &Config) -> Result<Queue, ExitCode> {
    match RedisPool::new(&config.redis) {
        Ok(redis) => Ok(Queue::new(redis, &config.redis.queue_prefix)),
        Err(e) => {
            eprintln!("{NAME}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Prints the newest dead letters, one per line: id, time, deliveries, error, job.
async fn dead_list(config: &Config, limit: usize) -> ExitCode {
    let queue = match queue(config) {
        Ok(queue) => queue,
        Err(code) => return code,
    };
    match queue.dead_letters(limit).await {
        Ok(letters) => {
            for letter in &letters {
                println!(
                    "{}\t{}\t{} deliveries\t{}\t{}",
                    letter.id, letter.failed_at, letter.attempts, letter.error, letter.job
                );
            }
            println!("{} dead letter(s) shown", letters.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: cannot read the dead letters: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Queues one dead letter (or all) again; exit 1 if any was kept.
async fn dead_retry(config: &Config, id: Option<&str>) -> ExitCode {
    let queue = match queue(config) {
        Ok(queue) => queue,
        Err(code) => return code,
    };
    let pool = match ai_agents::db::connect_lazy(&config.database) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = match id {
        Some(id) => dead_letters::retry(&queue, &pool, id)
            .await
            .map(|outcome| vec![(id.to_owned(), outcome)]),
        None => dead_letters::retry_all(&queue, &pool).await,
    };
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut queued = 0;
    let mut failed = false;
    for (id, outcome) in &outcomes {
        match outcome {
            Retried::Queued => queued += 1,
            Retried::Gone => {
                println!("{id}: no such dead letter");
                failed |= outcomes.len() == 1;
            }
            Retried::Kept(reason) => {
                println!("{id}: kept: {reason}");
                failed = true;
            }
        }
    }
    println!("{queued} dead letter(s) queued again");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Deletes dead letters (all, or those older than `age`).
async fn dead_purge(config: &Config, age: Option<Duration>) -> ExitCode {
    let queue = match queue(config) {
        Ok(queue) => queue,
        Err(code) => return code,
    };
    match queue.purge_dead(age).await {
        Ok(n) => {
            println!("{n} dead letter(s) deleted");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: cannot purge the dead letters: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Queues a ping and waits for the answer on a list of its own.
async fn run_ping(config: &Config) -> ExitCode {
    let queue = match queue(config) {
        Ok(queue) => queue,
        Err(code) => return code,
    };
    let reply_to = queue.keys().ping_reply();
    let entry = match queue
        .enqueue(&Job::new(JobKind::Ping {
            reply_to: reply_to.clone(),
        }))
        .await
    {
        Ok(entry) => entry,
        Err(e) => {
            eprintln!("{NAME}: cannot queue the ping: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = async {
        let mut conn = queue.redis().dedicated().await?;
        let secs = PING_WAIT.as_secs_f64();
        redis::cmd("BLPOP")
            .arg(&reply_to)
            .arg(secs)
            .query_async::<Option<(String, String)>>(&mut conn)
            .await
    };
    match tokio::time::timeout(PING_WAIT + Duration::from_secs(1), answer).await {
        Ok(Ok(Some((_, text)))) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("{NAME}: Redis error while waiting: {e}");
            let _ = queue.withdraw(&entry).await;
            ExitCode::FAILURE
        }
        _ => {
            eprintln!(
                "{NAME}: no worker answered within {} s",
                PING_WAIT.as_secs()
            );
            let _ = queue.withdraw(&entry).await;
            ExitCode::FAILURE
        }
    }
}
