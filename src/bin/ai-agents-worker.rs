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
    boot::{self, Binary, BoxError, Start},
    commands::worker,
    config::{Config, Requirements},
    worker::dead_letters,
};

/// What the command line asks for.
enum Command {
    Run,
    Ping,
    DeadList(usize),
    DeadRetry(Option<String>),
    DeadPurge(Option<Duration>),
}

impl Binary for Command {
    const NAME: &'static str = "ai-agents-worker";
    const USAGE: &'static str = "usage: ai-agents-worker [ping | dead list [--limit N] | \
                                 dead retry ID|--all | dead purge [--older-than D] | --version]";

    fn parse(args: &[&str]) -> Option<Self> {
        Some(match args {
            [] => Self::Run,
            ["ping"] => Self::Ping,
            ["dead", "list"] => Self::DeadList(20),
            ["dead", "list", "--limit", n] => Self::DeadList(n.parse().ok().filter(|n| *n > 0)?),
            ["dead", "retry", "--all"] => Self::DeadRetry(None),
            ["dead", "retry", id] if !id.starts_with('-') => {
                Self::DeadRetry(Some((*id).to_owned()))
            }
            ["dead", "purge"] => Self::DeadPurge(None),
            ["dead", "purge", "--older-than", age] => {
                Self::DeadPurge(Some(dead_letters::parse_age(age)?))
            }
            _ => return None,
        })
    }

    fn start(&self) -> Start {
        // Only the worker itself logs; the other commands print for the operator.
        let run = matches!(self, Self::Run);
        Start {
            requirements: match self {
                Self::Run | Self::DeadRetry(_) => Requirements::Worker,
                Self::Ping | Self::DeadList(_) | Self::DeadPurge(_) => Requirements::Ping,
            },
            logs: run.then_some("worker"),
            serves: false,
        }
    }

    async fn run(self, config: Config) -> Result<(), BoxError> {
        match self {
            Self::Run => worker::run(config).await,
            Self::Ping => worker::ping(config).await,
            Self::DeadList(limit) => worker::dead_list(config, limit).await,
            Self::DeadRetry(id) => worker::dead_retry(config, id).await,
            Self::DeadPurge(age) => worker::dead_purge(config, age).await,
        }
    }
}

fn main() -> ExitCode {
    boot::main::<Command>()
}
