//! Starting a binary: the steps both binaries share, in their order.
//!
//! [`arguments`] answers `--version` (which needs no configuration at all), `--help` and
//! unknown arguments (exit 2) the same way for both binaries; each binary only says which
//! commands it has. [`Boot::run`] then loads the configuration (when it is invalid: one line
//! naming the variable, exit 78, `EX_CONFIG`), installs the TLS provider, raises the open-files
//! limit of a server, builds the runtime, starts the logs, runs the command, and turns the
//! command's error into one line on stderr — the whole cause chain, each text once — and exit 1.

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

/// What the command line asks a binary to do.
pub enum Arguments<C> {
    /// Run this command.
    Run(C),
    /// Nothing more to do (the version or the usage was printed): exit with this code.
    Exit(ExitCode),
}

/// Reads the process's arguments: `--version`, `--help` and unknown arguments are answered
/// here, the rest is `parse`'s (`None`: unknown).
pub fn arguments<C>(
    name: &str,
    usage: &str,
    parse: impl FnOnce(&[&str]) -> Option<C>,
) -> Arguments<C> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version" | "-V" | "version"] => {
            println!("{name} {}", env!("CARGO_PKG_VERSION"));
            Arguments::Exit(ExitCode::SUCCESS)
        }
        ["--help" | "-h" | "help"] => {
            println!("{usage}");
            Arguments::Exit(ExitCode::SUCCESS)
        }
        args => match parse(args) {
            Some(command) => Arguments::Run(command),
            None => {
                eprintln!("{name}: unknown arguments\n{usage}");
                Arguments::Exit(ExitCode::from(EXIT_USAGE))
            }
        },
    }
}

/// How one command of a binary starts.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    /// The binary's name, which starts every line it prints on stderr.
    pub name: &'static str,
    /// The variables the command needs.
    pub requirements: Requirements,
    /// The `service` of its log lines; `None` for a command whose output is for a person or a
    /// probe (a listing, a health check), which log lines would only interleave.
    pub logs: Option<&'static str>,
    /// Whether it serves connections: the open-files limit is then raised before the runtime's
    /// threads exist, so that all of them see it (see [`crate::os`]).
    pub serves: bool,
}

impl Boot {
    /// Runs `command` with the loaded configuration (see the module doc); the process's exit
    /// code.
    pub fn run<F, Fut>(self, command: F) -> ExitCode
    where
        F: FnOnce(Config) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let config = match Config::load(self.requirements) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        crate::install_tls_provider();
        let open_files = self.serves.then(crate::os::raise_open_files_limit);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("{}: cannot start the async runtime: {e}", self.name);
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(async move {
            if let Some(service) = self.logs {
                telemetry::init(service, &config);
                log_open_files(open_files);
            }
            match command(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if self.logs.is_some() {
                        let error = &*e as &dyn std::error::Error;
                        tracing::error!(error, "{} failed", self.name);
                    }
                    eprintln!("{}: {}", self.name, telemetry::error_chain(&*e));
                    ExitCode::FAILURE
                }
            }
        })
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
