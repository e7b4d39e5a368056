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
    boot::{self, Arguments, Boot},
    commands::worker,
    config::Requirements,
    worker::dead_letters,
};

const NAME: &str = "ai-agents-worker";

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
    let command = match boot::arguments(NAME, USAGE, parse) {
        Arguments::Run(command) => command,
        Arguments::Exit(code) => return code,
    };
    // Only the worker itself logs; the other commands print for the operator.
    let boot = |requirements| Boot {
        name: NAME,
        requirements,
        logs: None,
        serves: false,
    };
    match command {
        Command::Run => Boot {
            logs: Some("worker"),
            ..boot(Requirements::Worker)
        }
        .run(worker::run),
        Command::Ping => boot(Requirements::Ping).run(worker::ping),
        Command::DeadList(limit) => {
            boot(Requirements::Ping).run(move |config| worker::dead_list(config, limit))
        }
        Command::DeadRetry(id) => {
            boot(Requirements::Worker).run(move |config| worker::dead_retry(config, id))
        }
        Command::DeadPurge(age) => {
            boot(Requirements::Ping).run(move |config| worker::dead_purge(config, age))
        }
    }
}
