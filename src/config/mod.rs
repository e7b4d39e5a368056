//! Configuration from the environment (then `.env`; the real environment wins).
//!
//! Every variable of the contract is read once at start into [`Config`]. Parsing is done by
//! `envconfig`; the rules that span several variables (defaults that depend on the environment,
//! secrets that are required outside development, limits that must be ordered) live in
//! `rules`. An error names the variable and never repeats its value, because the value may be
//! a secret.

mod rules;

use std::{collections::HashMap, fmt, net::SocketAddr, str::FromStr, time::Duration};

use envconfig::Envconfig;
use secrecy::SecretString;

use rules::RawConfig;

/// Where the process runs; decides defaults and which secrets are mandatory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// A developer's machine: local services, generated secrets, pretty logs.
    Development,
    /// Automated tests: like production, but the test harness provides everything.
    Test,
    /// A real deployment: no defaults for secrets, JSON logs.
    Production,
}

impl Environment {
    /// The name used in logs and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Test => "test",
            Self::Production => "production",
        }
    }
}

impl FromStr for Environment {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" => Ok(Self::Development),
            "test" => Ok(Self::Test),
            "production" => Ok(Self::Production),
            _ => Err(()),
        }
    }
}

/// Shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for machines.
    Json,
    /// Coloured multi-field lines, for people.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err(()),
        }
    }
}

/// The development database the project's dev-services script creates.
pub const DEV_DATABASE_URL: &str =
    "postgres://ai_agents_owner:ai_agents_owner@127.0.0.1:55432/ai_agents";
/// The development Redis the project's dev-services script starts.
pub const DEV_REDIS_URL: &str = "redis://127.0.0.1:56379";

/// A configuration problem, always tied to one variable; the value is never repeated.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it, in words that contain no part of its value.
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

impl From<envconfig::Error> for ConfigError {
    fn from(error: envconfig::Error) -> Self {
        match error {
            envconfig::Error::EnvVarMissing { name } => Self::new(name, "is required"),
            envconfig::Error::ParseError { name } => Self::new(name, "has an invalid value"),
        }
    }
}

/// PostgreSQL pool settings.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection URL; contains the password.
    pub url: SecretString,
    /// Upper bound of connections per process.
    pub pool_size: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// How long a caller waits for a connection before giving up.
    pub connect_timeout: Duration,
    /// Server-side bounds of every application session (not of migrations).
    pub session_limits: SessionLimits,
}

/// PostgreSQL's own bounds on one session, set at connect time (startup `options`, so they
/// survive `RESET ALL`): a statement stuck on a lock or a slow plan gives up instead of holding
/// a pooled connection until every request behind it times out (contract section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `statement_timeout`.
    pub statement_timeout: Duration,
    /// `lock_timeout`.
    pub lock_timeout: Duration,
    /// `idle_in_transaction_session_timeout`.
    pub idle_in_transaction_timeout: Duration,
}

/// What the client adds to `statement_timeout` before it calls a connection stuck.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

impl SessionLimits {
    /// How long the client waits for one statement's answer. A live server ends every
    /// statement by `statement_timeout`, so a connection silent past that and a margin is
    /// taken for stuck (a frozen server, a failover whose old connections neither answer nor
    /// reset), which would otherwise hang its caller until the kernel gives up on it, about 15
    /// minutes. One wait is not covered by `statement_timeout`: a `COMMIT` waiting for a
    /// synchronous standby or a stalled disk. Past this bound it counts as stuck too.
    pub fn answer_within(&self) -> Duration {
        self.statement_timeout + ANSWER_MARGIN
    }
}

/// Redis client settings.
#[derive(Clone)]
pub struct RedisConfig {
    /// Connection URL (`redis://` or `rediss://`); may contain a password.
    pub url: SecretString,
    /// Multiplexed connections per process.
    pub max_connections: usize,
    /// Bound for connecting and for each command's answer.
    pub pool_timeout: Duration,
    /// Namespace of every key, so deployments can share one Redis.
    pub queue_prefix: String,
}

/// Worker behaviour (contract §6).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs in flight per process.
    pub concurrency: usize,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay; doubles per retry.
    pub retry_base: Duration,
    /// A job held this long by a silent worker goes back to the queue.
    pub reclaim_after: Duration,
    /// The job is asked to stop.
    pub soft_time_limit: Duration,
    /// The job is abandoned and counted as failed.
    pub time_limit: Duration,
    /// Where the worker serves `/metrics`, when set.
    pub metrics_addr: Option<SocketAddr>,
    /// A `pending` row untouched this long before the oldest queued job is presumed to have
    /// lost its job, and is queued again.
    pub orphan_after: Duration,
    /// How much of the dead-letter stream is kept.
    pub dead_letters: crate::queue::dead::Retention,
}

/// Everything the binaries need, validated.
#[derive(Clone)]
pub struct Config {
    /// Deployment kind.
    pub environment: Environment,
    /// `EnvFilter` directive.
    pub log_level: String,
    /// Shape of log lines.
    pub log_format: LogFormat,
    /// API listen address.
    pub bind_addr: SocketAddr,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Whether the API applies pending migrations at start.
    pub run_migrations: bool,
    /// Bearer token for `/api/v1`; `None` only in development (one is then generated).
    pub admin_token: Option<SecretString>,
    /// Base64 of the 32-byte AES key that seals new secrets; `None` only in development (one
    /// is then generated).
    pub encryption_key: Option<SecretString>,
    /// Keys that still open what they sealed, during a key rotation (base64, each checked).
    pub encryption_old_keys: Vec<SecretString>,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
    /// Time a client has to send a request head, and again its body.
    pub client_read_timeout: Duration,
    /// Whether service-desk URLs may name loopback, private and link-local hosts.
    pub allow_internal_urls: bool,
    /// Where the API serves `/metrics` instead of its main port, when set.
    pub api_metrics_addr: Option<SocketAddr>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("environment", &self.environment)
            .field("bind_addr", &self.bind_addr)
            .field("log_format", &self.log_format)
            .field("run_migrations", &self.run_migrations)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// What a binary or subcommand needs outside development: each asks only for the variables
/// it uses, so `migrate` runs without Redis and `healthcheck` without any URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirements {
    /// The API server: both URLs, the admin token and the encryption key.
    Api,
    /// The worker: both URLs.
    Worker,
    /// `ai-agents-api migrate`: the database URL.
    Migrate,
    /// `ai-agents-api healthcheck`: only the bind address.
    Healthcheck,
    /// `ai-agents-worker ping`: the Redis URL.
    Ping,
    /// `ai-agents-api secrets verify|rotate`: the database URL and the encryption key.
    Secrets,
}

impl Requirements {
    fn database(self) -> bool {
        matches!(
            self,
            Self::Api | Self::Worker | Self::Migrate | Self::Secrets
        )
    }

    fn encryption_key(self) -> bool {
        matches!(self, Self::Api | Self::Secrets)
    }

    fn redis(self) -> bool {
        matches!(self, Self::Api | Self::Worker | Self::Ping)
    }
}

impl Config {
    /// Reads `.env` (if present; the real environment wins) and then the environment.
    pub fn load(requirements: Requirements) -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is not silently ignored.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(_) => return Err(ConfigError::new(".env", "cannot be parsed")),
        }
        rules::build(RawConfig::init_from_env()?, requirements)
    }

    /// Builds a configuration from explicit variables only (tests, embedding).
    pub fn from_map(
        vars: &HashMap<String, String>,
        requirements: Requirements,
    ) -> Result<Self, ConfigError> {
        rules::build(RawConfig::init_from_hashmap(vars)?, requirements)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_statement_answer_is_awaited_one_second_past_the_server_bound() {
        let limits = SessionLimits {
            statement_timeout: Duration::from_millis(1_500),
            lock_timeout: Duration::from_millis(500),
            idle_in_transaction_timeout: Duration::from_secs(10),
        };
        assert_eq!(limits.answer_within(), Duration::from_millis(2_500));
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn production() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AI_AGENTS_ENVIRONMENT", "production"),
            ("AI_AGENTS_DATABASE_URL", "postgres://u:p@db/x"),
            ("AI_AGENTS_REDIS_URL", "redis://r:6379"),
            ("AI_AGENTS_ADMIN_TOKEN", "0123456789abcdef0123"),
            ("AI_AGENTS_ENCRYPTION_KEY", KEY),
        ]
    }

    fn error_of(pairs: &[(&str, &str)], req: Requirements) -> ConfigError {
        match Config::from_map(&vars(pairs), req) {
            Ok(_) => panic!("expected a configuration error"),
            Err(e) => e,
        }
    }

    #[test]
    fn development_needs_nothing() {
        let config = Config::from_map(&HashMap::new(), Requirements::Api).expect("defaults");
        assert_eq!(config.environment, Environment::Development);
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert!(config.run_migrations);
        assert_eq!(config.database.url.expose_secret(), DEV_DATABASE_URL);
        assert_eq!(config.database.pool_size, 20);
        assert_eq!(config.worker.concurrency, 4);
        assert_eq!(config.worker.retry_base, Duration::from_millis(2000));
        assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    }

    #[test]
    fn production_defaults_differ() {
        let config = Config::from_map(&vars(&production()), Requirements::Api).expect("valid");
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(!config.run_migrations);
    }

    #[test]
    fn production_requires_secrets_and_names_them() {
        for missing in [
            "AI_AGENTS_ADMIN_TOKEN",
            "AI_AGENTS_ENCRYPTION_KEY",
            "AI_AGENTS_DATABASE_URL",
            "AI_AGENTS_REDIS_URL",
        ] {
            let pairs: Vec<_> = production()
                .into_iter()
                .filter(|(k, _)| *k != missing)
                .collect();
            let error = error_of(&pairs, Requirements::Api);
            assert_eq!(error.variable, missing);
            assert!(error.to_string().contains(missing));
        }
    }

    #[test]
    fn worker_does_not_need_api_secrets() {
        let pairs: Vec<_> = production()
            .into_iter()
            .filter(|(k, _)| !k.contains("TOKEN") && !k.contains("KEY"))
            .collect();
        assert!(Config::from_map(&vars(&pairs), Requirements::Worker).is_ok());
    }

    #[test]
    fn bad_values_name_the_variable_without_echoing_it() {
        let cases = [
            ("AI_AGENTS_ENVIRONMENT", "staging-secret-value"),
            ("AI_AGENTS_BIND_ADDR", "nonsense-secret-value"),
            ("AI_AGENTS_DATABASE_POOL_SIZE", "many-secret-value"),
            ("AI_AGENTS_DATABASE_POOL_SIZE", "0"),
            ("AI_AGENTS_LOG_FORMAT", "xml-secret-value"),
            ("AI_AGENTS_RUN_MIGRATIONS", "maybe-secret-value"),
            ("AI_AGENTS_ENCRYPTION_KEY", "short-secret-value"),
            ("AI_AGENTS_DATABASE_URL", "mysql://secret-value"),
            ("AI_AGENTS_REDIS_URL", "http://secret-value"),
            ("AI_AGENTS_WORKER_CONCURRENCY", "0"),
            ("AI_AGENTS_LOG_LEVEL", "[[[secret-value"),
            ("AI_AGENTS_WORKER_METRICS_ADDR", "nowhere-secret-value"),
        ];
        for (name, value) in cases {
            let error = error_of(&[(name, value)], Requirements::Api);
            assert_eq!(error.variable, name, "{value}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn times_beyond_a_year_are_refused_at_start() {
        for (name, value) in [
            ("AI_AGENTS_CLIENT_READ_TIMEOUT_SECS", "18446744073709551615"),
            ("AI_AGENTS_REQUEST_TIMEOUT_SECS", "31536001"),
            ("AI_AGENTS_WORKER_RETRY_BASE_MS", "31536000001"),
        ] {
            let error = error_of(&[(name, value)], Requirements::Api);
            assert_eq!(error.variable, name, "{value}");
            assert!(error.to_string().contains("a year"), "{error}");
        }
        let year = [("AI_AGENTS_CLIENT_READ_TIMEOUT_SECS", "31536000")];
        let config = Config::from_map(&vars(&year), Requirements::Api);
        assert!(config.is_ok(), "a year is still accepted");
    }

    #[test]
    fn each_subcommand_needs_only_its_variables() {
        let base = [("AI_AGENTS_ENVIRONMENT", "production")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            vars(&pairs)
        };
        assert!(Config::from_map(&with(&[]), Requirements::Healthcheck).is_ok());
        assert!(
            Config::from_map(
                &with(&[("AI_AGENTS_DATABASE_URL", "postgres://u:p@db/x")]),
                Requirements::Migrate
            )
            .is_ok()
        );
        assert!(
            Config::from_map(
                &with(&[("AI_AGENTS_REDIS_URL", "redis://r")]),
                Requirements::Ping
            )
            .is_ok()
        );
        let error = error_of(
            &[("AI_AGENTS_ENVIRONMENT", "production")],
            Requirements::Migrate,
        );
        assert_eq!(error.variable, "AI_AGENTS_DATABASE_URL");
        let error = error_of(
            &[("AI_AGENTS_ENVIRONMENT", "production")],
            Requirements::Ping,
        );
        assert_eq!(error.variable, "AI_AGENTS_REDIS_URL");
    }

    #[test]
    fn old_encryption_keys_are_checked_without_echoing_them() {
        const OTHER: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
        let with_old = |old: &str| {
            let mut pairs = production();
            pairs.push(("AI_AGENTS_ENCRYPTION_OLD_KEYS", old));
            vars(&pairs)
        };
        let config = Config::from_map(&with_old(&format!(" {OTHER} ,")), Requirements::Api)
            .expect("one old key, a trailing comma");
        assert_eq!(config.encryption_old_keys.len(), 1);
        assert_eq!(config.encryption_old_keys[0].expose_secret(), OTHER);
        for (old, reason) in [
            (format!("{OTHER},secret-not-a-key"), "key number 2"),
            (format!("{OTHER},{OTHER}"), "repeat"),
            (KEY.to_owned(), "repeat"),
        ] {
            let error = match Config::from_map(&with_old(&old), Requirements::Api) {
                Ok(_) => panic!("{reason}: accepted"),
                Err(e) => e,
            };
            assert_eq!(error.variable, "AI_AGENTS_ENCRYPTION_OLD_KEYS");
            let text = error.to_string();
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains("secret") && !text.contains(OTHER), "{text}");
        }
    }

    #[test]
    fn secrets_subcommands_need_the_database_and_the_key_only() {
        let pairs = [
            ("AI_AGENTS_ENVIRONMENT", "production"),
            ("AI_AGENTS_DATABASE_URL", "postgres://u:p@db/x"),
            ("AI_AGENTS_ENCRYPTION_KEY", KEY),
        ];
        assert!(Config::from_map(&vars(&pairs), Requirements::Secrets).is_ok());
        for missing in ["AI_AGENTS_DATABASE_URL", "AI_AGENTS_ENCRYPTION_KEY"] {
            let rest: Vec<_> = pairs.into_iter().filter(|(k, _)| *k != missing).collect();
            assert_eq!(error_of(&rest, Requirements::Secrets).variable, missing);
        }
    }

    #[test]
    fn small_pools_and_host_names_are_fine() {
        let config = Config::from_map(
            &vars(&[
                ("AI_AGENTS_DATABASE_POOL_SIZE", "3"),
                ("AI_AGENTS_BIND_ADDR", "localhost:8123"),
            ]),
            Requirements::Api,
        )
        .expect("valid");
        assert_eq!(config.database.min_connections, 3);
        assert_eq!(config.bind_addr.port(), 8123);
        assert!(config.bind_addr.ip().is_loopback());
    }

    #[test]
    fn soft_limit_must_not_exceed_hard_limit() {
        let error = error_of(
            &[
                ("AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS", "200"),
                ("AI_AGENTS_TASK_TIME_LIMIT_SECS", "100"),
            ],
            Requirements::Worker,
        );
        assert_eq!(error.variable, "AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS");
    }

    #[test]
    fn reclaim_must_outlast_the_hard_time_limit_for_the_worker() {
        let pairs = [
            ("AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", "3"),
            ("AI_AGENTS_TASK_TIME_LIMIT_SECS", "30"),
            ("AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS", "20"),
        ];
        let error = error_of(&pairs, Requirements::Worker);
        assert_eq!(error.variable, "AI_AGENTS_WORKER_RECLAIM_AFTER_SECS");
        assert!(error.to_string().contains("AI_AGENTS_TASK_TIME_LIMIT_SECS"));
        // The API does not reclaim jobs: the same values do not stop it.
        assert!(Config::from_map(&vars(&pairs), Requirements::Api).is_ok());
    }

    #[test]
    fn session_limits_are_ordered_and_below_the_request_deadline() {
        let config = Config::from_map(&HashMap::new(), Requirements::Api).expect("defaults");
        assert_eq!(
            config.database.session_limits.statement_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(config.client_read_timeout, Duration::from_secs(30));
        assert!(!config.allow_internal_urls);
        let error = error_of(
            &[
                ("AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS", "500"),
                ("AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS", "1000"),
            ],
            Requirements::Api,
        );
        assert_eq!(error.variable, "AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS");
        let error = error_of(
            &[
                ("AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS", "30000"),
                ("AI_AGENTS_REQUEST_TIMEOUT_SECS", "30"),
            ],
            Requirements::Api,
        );
        assert_eq!(error.variable, "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS");
        let error = error_of(
            &[("AI_AGENTS_CLIENT_READ_TIMEOUT_SECS", "0")],
            Requirements::Api,
        );
        assert_eq!(error.variable, "AI_AGENTS_CLIENT_READ_TIMEOUT_SECS");
        let error = error_of(
            &[("AI_AGENTS_ALLOW_INTERNAL_URLS", "perhaps")],
            Requirements::Api,
        );
        assert_eq!(error.variable, "AI_AGENTS_ALLOW_INTERNAL_URLS");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config = Config::from_map(
            &vars(&[("AI_AGENTS_ADMIN_TOKEN", ""), ("AI_AGENTS_LOG_FORMAT", " ")]),
            Requirements::Api,
        )
        .expect("empty means unset");
        assert!(config.admin_token.is_none());
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let config = Config::from_map(&vars(&production()), Requirements::Api).expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("0123456789abcdef0123"));
        assert!(!printed.contains("postgres://"));
    }
}
