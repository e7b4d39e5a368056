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
    boot::{self, Binary, BoxError, Start},
    commands::api,
    config::{Config, Requirements},
    secrets_admin::Mode,
};

/// What the command line asks for.
enum Command {
    Serve,
    Migrate,
    Revert,
    Healthcheck,
    Secrets(Mode),
}

impl Binary for Command {
    const NAME: &'static str = "ai-agents-api";
    const USAGE: &'static str = "usage: ai-agents-api [migrate [revert] | healthcheck | \
                                 secrets verify | secrets rotate | --version]";

    fn parse(args: &[&str]) -> Option<Self> {
        Some(match args {
            [] => Self::Serve,
            ["migrate"] => Self::Migrate,
            ["migrate", "revert"] => Self::Revert,
            ["healthcheck"] => Self::Healthcheck,
            ["secrets", "verify"] => Self::Secrets(Mode::Verify),
            ["secrets", "rotate"] => Self::Secrets(Mode::Rotate),
            _ => return None,
        })
    }

    fn start(&self) -> Start {
        let (requirements, logs) = match self {
            Self::Serve => (Requirements::Api, true),
            Self::Migrate | Self::Revert => (Requirements::Migrate, true),
            // A probe's answer is its exit code; nothing to log.
            Self::Healthcheck => (Requirements::Healthcheck, false),
            Self::Secrets(_) => (Requirements::Secrets, true),
        };
        Start {
            requirements,
            logs: logs.then_some("api"),
            serves: matches!(self, Self::Serve),
        }
    }

    async fn run(self, config: Config) -> Result<(), BoxError> {
        match self {
            Self::Serve => api::serve(config).await,
            Self::Migrate => api::migrate(config, false).await,
            Self::Revert => api::migrate(config, true).await,
            Self::Healthcheck => api::healthcheck(config).await,
            Self::Secrets(mode) => api::secrets(config, mode).await,
        }
    }
}

fn main() -> ExitCode {
    boot::main::<Command>()
}
