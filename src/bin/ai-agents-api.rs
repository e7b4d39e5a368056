//! `ai-agents-api`: serves the HTTP API, or runs one of its maintenance subcommands.
//!
//! ```text
//! ai-agents-api                  serve HTTP on AI_AGENTS_BIND_ADDR until SIGTERM/SIGINT
//! ai-agents-api migrate          apply pending migrations, then exit
//! ai-agents-api migrate revert   revert the most recent migration, then exit
//! ai-agents-api healthcheck      GET our own /health; exit 0 on 200
//! ai-agents-api secrets verify   decrypt every stored tenant secret; non-zero if one fails
//! ai-agents-api secrets rotate   re-encrypt every secret not yet under the current key
//! ai-agents-api --version        print the version (needs no configuration)
//! ```

use std::process::ExitCode;

use ai_agents::{
    boot::{self, Arguments, Boot},
    commands::api,
    config::Requirements,
    secrets_admin::Mode,
};

const NAME: &str = "ai-agents-api";

const USAGE: &str = "usage: ai-agents-api [migrate [revert] | healthcheck | secrets verify | secrets rotate | --version]";

/// What the command line asks for.
enum Command {
    Serve,
    Migrate,
    Revert,
    Healthcheck,
    Secrets(Mode),
}

fn parse(args: &[&str]) -> Option<Command> {
    Some(match args {
        [] => Command::Serve,
        ["migrate"] => Command::Migrate,
        ["migrate", "revert"] => Command::Revert,
        ["healthcheck"] => Command::Healthcheck,
        ["secrets", "verify"] => Command::Secrets(Mode::Verify),
        ["secrets", "rotate"] => Command::Secrets(Mode::Rotate),
        _ => return None,
    })
}

fn main() -> ExitCode {
    let command = match boot::arguments(NAME, USAGE, parse) {
        Arguments::Run(command) => command,
        Arguments::Exit(code) => return code,
    };
    let boot = |requirements| Boot {
        name: NAME,
        requirements,
        logs: Some("api"),
        serves: false,
    };
    match command {
        Command::Serve => Boot {
            serves: true,
            ..boot(Requirements::Api)
        }
        .run(api::serve),
        Command::Migrate => boot(Requirements::Migrate).run(|config| api::migrate(config, false)),
        Command::Revert => boot(Requirements::Migrate).run(|config| api::migrate(config, true)),
        Command::Healthcheck => Boot {
            logs: None,
            ..boot(Requirements::Healthcheck)
        }
        .run(api::healthcheck),
        Command::Secrets(mode) => {
            boot(Requirements::Secrets).run(move |config| api::secrets(config, mode))
        }
    }
}
