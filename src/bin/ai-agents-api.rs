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
    api::Application,
    config::{Config, Requirements},
    crypto::Keyring,
    db, healthcheck,
    secrets_admin::{self, Mode},
    shutdown, telemetry,
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
        ["secrets", "verify"] => run(Command::Secrets(Mode::Verify)),
        ["secrets", "rotate"] => run(Command::Secrets(Mode::Rotate)),
        _ => {
            eprintln!("{NAME}: unknown arguments\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn usage() -> &'static str {
    "usage: ai-agents-api [migrate [revert] | healthcheck | secrets verify | secrets rotate | --version]"
}

enum Command {
    Serve,
    Migrate,
    Revert,
    Healthcheck,
    Secrets(Mode),
}

fn run(command: Command) -> ExitCode {
    let requirements = match command {
        Command::Serve => Requirements::Api,
        Command::Migrate | Command::Revert => Requirements::Migrate,
        Command::Healthcheck => Requirements::Healthcheck,
        Command::Secrets(_) => Requirements::Secrets,
    };
    let config = match Config::load(requirements) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(78);
        }
    };
    ai_agents::install_tls_provider();
    // Before the runtime's threads exist, so all of them see the raised limit.
    let open_files = matches!(command, Command::Serve).then(ai_agents::os::raise_open_files_limit);
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
        match open_files {
            Some(Ok(limits)) => tracing::info!(
                soft_before = limits.before,
                soft = limits.soft,
                hard = limits.hard,
                "open-files limit"
            ),
            Some(Err(e)) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
            None => {}
        }
        let result = match command {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(&config, false).await,
            Command::Secrets(mode) => secrets(&config, mode).await,
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

/// Runs `secrets verify|rotate`; failures are listed on stdout and make the exit non-zero.
async fn secrets(config: &Config, mode: Mode) -> Result<(), BoxError> {
    let keyring = Keyring::load(config.encryption_key.as_ref(), &config.encryption_old_keys)?;
    let pool = db::connect_lazy(&config.database)?;
    let summary = secrets_admin::run(&pool, &keyring, mode, &mut std::io::stdout()).await;
    pool.close().await;
    match summary?.failed {
        0 => Ok(()),
        failed => Err(format!("{failed} stored secret(s) could not be decrypted").into()),
    }
}
