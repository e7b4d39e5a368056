//! `ai-agents-api`: serves the HTTP API, or runs one of its maintenance subcommands.
//!
//! ```text
//! ai-agents-api                  serve HTTP on AI_AGENTS_BIND_ADDR until SIGTERM/SIGINT
//! ai-agents-api migrate          apply pending migrations, then exit
//! ai-agents-api migrate revert   revert the most recent migration, then exit
//! ai-agents-api healthcheck      GET our own /health; exit 0 on 200
//! ai-agents-api --version        print the version (needs no configuration)
//! ```

use std::process::ExitCode;

use ai_agents::{
    api::Application,
    config::{Config, Requirements},
    db, healthcheck, shutdown, telemetry,
};

const NAME: &str = "ai-agents-api";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version" | "-V" | "version"] => {
            println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h" | "help"] => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        [] => run(Command::Serve),
        ["migrate"] => run(Command::Migrate),
        ["migrate", "revert"] => run(Command::Revert),
        ["healthcheck"] => run(Command::Healthcheck),
        _ => {
            eprintln!("{NAME}: unknown arguments\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn usage() -> &'static str {
    "usage: ai-agents-api [migrate [revert] | healthcheck | --version]"
}

enum Command {
    Serve,
    Migrate,
    Revert,
    Healthcheck,
}

fn run(command: Command) -> ExitCode {
    let requirements = match command {
        Command::Serve => Requirements::Api,
        Command::Migrate | Command::Revert => Requirements::Migrate,
        Command::Healthcheck => Requirements::Healthcheck,
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
        if let Command::Healthcheck = command {
            return match healthcheck::probe(healthcheck::target(config.bind_addr)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{NAME}: unhealthy: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        telemetry::init("api", &config);
        let result = match command {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(&config, false).await,
            _ => migrate(&config, true).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = &*e as &dyn std::error::Error, "{NAME} failed");
                eprintln!("{NAME}: {}", telemetry::error_chain(&*e));
                ExitCode::FAILURE
            }
        }
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(config: Config) -> Result<(), BoxError> {
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown::signal()).await?;
    Ok(())
}

/// On one connection: its error says why PostgreSQL could not be reached, where a pool's
/// would only say that it timed out.
async fn migrate(config: &Config, revert: bool) -> Result<(), BoxError> {
    let mut connection = db::connect_direct(&config.database).await?;
    if revert {
        match db::revert_last(&mut connection).await? {
            Some(version) => tracing::info!(version, "migration reverted"),
            None => tracing::info!("no migration to revert"),
        }
    } else {
        db::migrate(&mut connection).await?;
        tracing::info!("migrations applied");
    }
    // The work is done: a failed goodbye to the server changes nothing.
    sqlx::Connection::close(connection).await.ok();
    Ok(())
}
