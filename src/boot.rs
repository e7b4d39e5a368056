//! Starting a binary: the steps both binaries share, in their order.
//!
//! A binary describes its commands as a [`Binary`] and its `main` calls [`main`], which
//! answers `--version` (it needs no configuration at all), `--help` and unknown arguments (exit
//! 2) the same way for both binaries. For a command it then loads the configuration (when it is
//! invalid: one line naming the variable, exit 78, `EX_CONFIG`), installs the TLS provider,
//! raises the open-files limit of a server, builds the runtime, starts the logs, runs the
//! command, and turns the command's error into one line on stderr — the whole cause chain,
//! each text once — and exit 1.

use std::process::ExitCode;

use crate::{
    config::{Config, Requirements},
    telemetry,
};

/// What a command fails with: anything that explains itself, with its causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and what was being done when it happened, kept as its source: the line on stderr
/// then reads "what was being done: the error: its cause".
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct Failed {
    doing: &'static str,
    #[source]
    source: BoxError,
}

/// Wraps an error as [`Failed`] with `doing`, for `map_err`.
pub fn failed<E: Into<BoxError>>(doing: &'static str) -> impl FnOnce(E) -> Failed {
    move |error| Failed {
        doing,
        source: error.into(),
    }
}

/// Exit code of an invalid configuration (`EX_CONFIG` of sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// Exit code of arguments the binary does not know.
pub const EXIT_USAGE: u8 = 2;

/// One binary: its commands, how each is read from the arguments, started and run.
pub trait Binary: Sized {
    /// The binary's name, which starts every line it prints on stderr.
    const NAME: &'static str;
    /// Its usage line, for `--help` and unknown arguments.
    const USAGE: &'static str;
    /// The command the arguments name, `None` when they name none.
    fn parse(args: &[&str]) -> Option<Self>;
    /// How the command starts.
    fn start(&self) -> Start;
    /// What the command does, once configured.
    fn run(self, config: Config) -> impl Future<Output = Result<(), BoxError>>;
}

/// How one command starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The variables the command needs.
    pub requirements: Requirements,
    /// The `service` of its log lines; `None` for a command whose output is for a person or a
    /// probe (a listing, a health check), which log lines would only interleave.
    pub logs: Option<&'static str>,
    /// Whether it serves connections: the open-files limit is then raised before the runtime's
    /// threads exist, so that all of them see it (see [`crate::os`]).
    pub serves: bool,
}

/// The process of binary `B` from its arguments to its exit code (see the module doc).
pub fn main<B: Binary>() -> ExitCode {
    let command = match command::<B>() {
        Ok(command) => command,
        Err(code) => return code,
    };
    let start = command.start();
    let config = match Config::load(start.requirements) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", B::NAME);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::install_tls_provider();
    let open_files = start.serves.then(crate::os::raise_open_files_limit);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", B::NAME);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if let Some(service) = start.logs {
            telemetry::init(service, &config);
            log_open_files(open_files);
        }
        let Err(e) = command.run(config).await else {
            return ExitCode::SUCCESS;
        };
        if start.logs.is_some() {
            let error = &*e as &dyn std::error::Error;
            tracing::error!(error, "{} failed", B::NAME);
        }
        eprintln!("{}: {}", B::NAME, telemetry::error_chain(&*e));
        ExitCode::FAILURE
    })
}

/// The command the process's arguments name, or the exit code when there is nothing to run:
/// `--version` and `--help` are answered here, unknown arguments refused (exit 2).
fn command<B: Binary>() -> Result<B, ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version" | "-V" | "version"] => {
            println!("{} {}", B::NAME, env!("CARGO_PKG_VERSION"));
            Err(ExitCode::SUCCESS)
        }
        ["--help" | "-h" | "help"] => {
            println!("{}", B::USAGE);
            Err(ExitCode::SUCCESS)
        }
        args => B::parse(args).ok_or_else(|| {
            eprintln!("{}: unknown arguments\n{}", B::NAME, B::USAGE);
            ExitCode::from(EXIT_USAGE)
        }),
    }
}

/// Logs what raising the open-files limit did, if it was tried.
fn log_open_files(outcome: Option<nix::Result<crate::os::OpenFiles>>) {
    match outcome {
        Some(Ok(limits)) => tracing::info!(
            soft_before = limits.before,
            soft = limits.soft,
            hard = limits.hard,
            "open-files limit"
        ),
        Some(Err(e)) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        None => {}
    }
}
