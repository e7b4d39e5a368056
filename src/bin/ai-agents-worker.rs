//! `ai-agents-worker`: consumes jobs until SIGTERM/SIGINT, or checks that some worker does.
//!
//! ```text
//! ai-agents-worker               consume jobs until SIGTERM/SIGINT (exit 0 after draining)
//! ai-agents-worker ping          queue a ping job, wait up to 10 s for a worker's answer
//! ai-agents-worker --version     print the version (needs no configuration)
//! ```

use std::{process::ExitCode, time::Duration};

use ai_agents::{
    config::{Config, Requirements},
    queue::{Job, JobKind, Queue, RedisPool},
    shutdown, telemetry, worker,
};
use tokio_util::sync::CancellationToken;

const NAME: &str = "ai-agents-worker";
const PING_WAIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ping = match args.as_slice() {
        ["--version" | "-V" | "version"] => {
            println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["--help" | "-h" | "help"] => {
            println!("usage: {NAME} [ping | --version]");
            return ExitCode::SUCCESS;
        }
        [] => false,
        ["ping"] => true,
        _ => {
            eprintln!("{NAME}: unknown arguments\nusage: {NAME} [ping | --version]");
            return ExitCode::from(2);
        }
    };
    let requirements = if ping {
        Requirements::Ping
    } else {
        Requirements::Worker
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
        if ping {
            return run_ping(&config).await;
        }
        telemetry::init("worker", &config);
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
        match worker::run(&config, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "worker failed");
                eprintln!("{NAME}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Queues a ping and waits for the answer on a list of its own.
async fn run_ping(config: &Config) -> ExitCode {
    let redis = match RedisPool::new(&config.redis) {
        Ok(redis) => redis,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let queue = Queue::new(redis, &config.redis.queue_prefix);
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
