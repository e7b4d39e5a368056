//! The rules from the variables as `envconfig` reads them ([`RawConfig`]) to a [`Config`]:
//! defaults that depend on the environment, what each command requires outside development,
//! numbers that must be positive, limits that must be ordered, keys that must decode. Each
//! rule names its variable and never repeats the value.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use envconfig::Envconfig;
use secrecy::SecretString;

use super::{
    Config, ConfigError, DEV_DATABASE_URL, DEV_REDIS_URL, DatabaseConfig, Environment, LogFormat,
    RedisConfig, Requirements, SessionLimits, WorkerConfig,
};
use crate::crypto::KeyError;

/// A boolean that also accepts the spellings people put in `.env` files.
#[derive(Debug, Clone, Copy)]
struct Flag(bool);

impl FromStr for Flag {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Self(true)),
            "false" | "0" | "no" | "off" => Ok(Self(false)),
            _ => Err(()),
        }
    }
}

/// The variables exactly as envconfig parses them; cross-field rules come after.
#[derive(Envconfig)]
pub(super) struct RawConfig {
    #[envconfig(from = "AI_AGENTS_ENVIRONMENT", default = "development")]
    environment: Environment,
    #[envconfig(from = "AI_AGENTS_LOG_LEVEL", default = "info")]
    log_level: String,
    #[envconfig(from = "AI_AGENTS_LOG_FORMAT")]
    log_format: Option<String>,
    #[envconfig(from = "AI_AGENTS_BIND_ADDR", default = "0.0.0.0:8000")]
    bind_addr: String,
    #[envconfig(from = "AI_AGENTS_DATABASE_URL")]
    database_url: Option<String>,
    #[envconfig(from = "AI_AGENTS_DATABASE_POOL_SIZE", default = "20")]
    database_pool_size: u32,
    #[envconfig(from = "AI_AGENTS_DATABASE_MIN_CONNECTIONS", default = "5")]
    database_min_connections: u32,
    #[envconfig(from = "AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS", default = "30")]
    database_connect_timeout_secs: u64,
    #[envconfig(from = "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS", default = "5000")]
    database_statement_timeout_ms: u64,
    #[envconfig(from = "AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS", default = "1000")]
    database_lock_timeout_ms: u64,
    #[envconfig(
        from = "AI_AGENTS_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default = "10000"
    )]
    database_idle_in_transaction_timeout_ms: u64,
    #[envconfig(from = "AI_AGENTS_REDIS_URL")]
    redis_url: Option<String>,
    #[envconfig(from = "AI_AGENTS_REDIS_MAX_CONNECTIONS", default = "10")]
    redis_max_connections: usize,
    #[envconfig(from = "AI_AGENTS_REDIS_POOL_TIMEOUT_SECS", default = "5")]
    redis_pool_timeout_secs: u64,
    #[envconfig(from = "AI_AGENTS_RUN_MIGRATIONS")]
    run_migrations: Option<String>,
    #[envconfig(from = "AI_AGENTS_ADMIN_TOKEN")]
    admin_token: Option<String>,
    #[envconfig(from = "AI_AGENTS_ENCRYPTION_KEY")]
    encryption_key: Option<String>,
    #[envconfig(from = "AI_AGENTS_ENCRYPTION_OLD_KEYS")]
    encryption_old_keys: Option<String>,
    #[envconfig(from = "AI_AGENTS_WORKER_CONCURRENCY", default = "4")]
    worker_concurrency: usize,
    #[envconfig(from = "AI_AGENTS_WORKER_MAX_RETRIES", default = "3")]
    worker_max_retries: u32,
    #[envconfig(from = "AI_AGENTS_WORKER_RETRY_BASE_MS", default = "2000")]
    worker_retry_base_ms: u64,
    #[envconfig(from = "AI_AGENTS_WORKER_RECLAIM_AFTER_SECS", default = "150")]
    worker_reclaim_after_secs: u64,
    #[envconfig(from = "AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS", default = "100")]
    task_soft_time_limit_secs: u64,
    #[envconfig(from = "AI_AGENTS_TASK_TIME_LIMIT_SECS", default = "120")]
    task_time_limit_secs: u64,
    #[envconfig(from = "AI_AGENTS_WORKER_ORPHAN_AFTER_SECS", default = "60")]
    worker_orphan_after_secs: u64,
    #[envconfig(from = "AI_AGENTS_DEAD_LETTER_MAX", default = "10000")]
    dead_letter_max: u64,
    #[envconfig(from = "AI_AGENTS_DEAD_LETTER_RETENTION_DAYS", default = "14")]
    dead_letter_retention_days: u64,
    #[envconfig(from = "AI_AGENTS_SHUTDOWN_GRACE_SECS", default = "25")]
    shutdown_grace_secs: u64,
    #[envconfig(from = "AI_AGENTS_QUEUE_PREFIX", default = "ai-agents")]
    queue_prefix: String,
    #[envconfig(from = "AI_AGENTS_WORKER_METRICS_ADDR")]
    worker_metrics_addr: Option<String>,
    #[envconfig(from = "AI_AGENTS_REQUEST_TIMEOUT_SECS", default = "30")]
    request_timeout_secs: u64,
    #[envconfig(from = "AI_AGENTS_CLIENT_READ_TIMEOUT_SECS", default = "30")]
    client_read_timeout_secs: u64,
    #[envconfig(from = "AI_AGENTS_ALLOW_INTERNAL_URLS", default = "false")]
    allow_internal_urls: Flag,
    #[envconfig(from = "AI_AGENTS_API_METRICS_ADDR")]
    api_metrics_addr: Option<String>,
}

/// The configuration of `raw` for a command with `requirements`; the first rule broken is the
/// error.
pub(super) fn build(raw: RawConfig, requirements: Requirements) -> Result<Config, ConfigError> {
    let dev = raw.environment == Environment::Development;
    let session_limits = session_limits(&raw, requirements)?;
    let bind_addr = resolve_bind_addr(&raw.bind_addr).ok_or_else(|| {
        ConfigError::new(
            "AI_AGENTS_BIND_ADDR",
            "must be HOST:PORT (e.g. 0.0.0.0:8000)",
        )
    })?;
    let log_format = log_format(&raw, dev)?;
    let (database_url, redis_url) = urls(&raw, requirements, dev)?;
    positive_numbers(&raw)?;
    worker_limits(&raw, requirements)?;
    let queue_prefix = raw.queue_prefix.trim().to_owned();
    if queue_prefix.is_empty() || queue_prefix.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            "AI_AGENTS_QUEUE_PREFIX",
            "must be a non-empty word without spaces",
        ));
    }
    let (worker_metrics_addr, api_metrics_addr) = metrics_addrs(&raw)?;
    let run_migrations = match non_empty(raw.run_migrations.clone()) {
        Some(s) => {
            s.parse::<Flag>()
                .map_err(|()| {
                    ConfigError::new("AI_AGENTS_RUN_MIGRATIONS", "must be true or false")
                })?
                .0
        }
        None => dev,
    };
    let secrets = secrets(&raw, requirements, dev)?;
    Ok(Config {
        environment: raw.environment,
        log_level: raw.log_level.clone(),
        log_format,
        bind_addr,
        database: database(&raw, database_url, session_limits),
        redis: RedisConfig {
            url: SecretString::from(redis_url),
            max_connections: raw.redis_max_connections,
            pool_timeout: Duration::from_secs(raw.redis_pool_timeout_secs),
            queue_prefix,
        },
        run_migrations,
        admin_token: secrets.admin_token,
        encryption_key: secrets.encryption_key,
        encryption_old_keys: secrets.encryption_old_keys,
        worker: worker(&raw, worker_metrics_addr),
        shutdown_grace: Duration::from_secs(raw.shutdown_grace_secs),
        request_timeout: Duration::from_secs(raw.request_timeout_secs),
        client_read_timeout: Duration::from_secs(raw.client_read_timeout_secs),
        allow_internal_urls: raw.allow_internal_urls.0,
        api_metrics_addr,
    })
}

/// A value that is set and not blank.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

/// The log filter must parse; the format defaults to `pretty` in development, else `json`.
fn log_format(raw: &RawConfig, dev: bool) -> Result<LogFormat, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&raw.log_level)
        .map_err(|_| ConfigError::new("AI_AGENTS_LOG_LEVEL", "is not a valid filter"))?;
    match non_empty(raw.log_format.clone()) {
        Some(s) => s
            .parse()
            .map_err(|()| ConfigError::new("AI_AGENTS_LOG_FORMAT", "must be `json` or `pretty`")),
        None if dev => Ok(LogFormat::Pretty),
        None => Ok(LogFormat::Json),
    }
}

/// The database and Redis URLs. Outside development a URL the command uses is required; one it
/// does not use may be missing and keeps the development default, which nothing connects to.
fn urls(
    raw: &RawConfig,
    requirements: Requirements,
    dev: bool,
) -> Result<(String, String), ConfigError> {
    let required =
        |value: &Option<String>, variable, dev_default: &str, needed: bool| match non_empty(
            value.clone(),
        ) {
            Some(v) => Ok(v),
            None if dev || !needed => Ok(dev_default.to_owned()),
            None => Err(ConfigError::new(
                variable,
                "is required outside development",
            )),
        };
    let database_url = required(
        &raw.database_url,
        "AI_AGENTS_DATABASE_URL",
        DEV_DATABASE_URL,
        requirements.database(),
    )?;
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            "AI_AGENTS_DATABASE_URL",
            "must start with postgres:// or postgresql://",
        ));
    }
    let redis_url = required(
        &raw.redis_url,
        "AI_AGENTS_REDIS_URL",
        DEV_REDIS_URL,
        requirements.redis(),
    )?;
    if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
        return Err(ConfigError::new(
            "AI_AGENTS_REDIS_URL",
            "must start with redis:// or rediss://",
        ));
    }
    Ok((database_url, redis_url))
}

/// Sizes, timeouts and counts that zero would break; times of at most a year.
fn positive_numbers(raw: &RawConfig) -> Result<(), ConfigError> {
    let numbers = [
        (
            "AI_AGENTS_DATABASE_POOL_SIZE",
            u64::from(raw.database_pool_size),
        ),
        (
            "AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS",
            raw.database_connect_timeout_secs,
        ),
        (
            "AI_AGENTS_REDIS_MAX_CONNECTIONS",
            raw.redis_max_connections as u64,
        ),
        (
            "AI_AGENTS_REDIS_POOL_TIMEOUT_SECS",
            raw.redis_pool_timeout_secs,
        ),
        (
            "AI_AGENTS_WORKER_CONCURRENCY",
            raw.worker_concurrency as u64,
        ),
        ("AI_AGENTS_WORKER_RETRY_BASE_MS", raw.worker_retry_base_ms),
        (
            "AI_AGENTS_WORKER_RECLAIM_AFTER_SECS",
            raw.worker_reclaim_after_secs,
        ),
        (
            "AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS",
            raw.task_soft_time_limit_secs,
        ),
        ("AI_AGENTS_TASK_TIME_LIMIT_SECS", raw.task_time_limit_secs),
        (
            "AI_AGENTS_WORKER_ORPHAN_AFTER_SECS",
            raw.worker_orphan_after_secs,
        ),
        ("AI_AGENTS_DEAD_LETTER_MAX", raw.dead_letter_max),
        (
            "AI_AGENTS_DEAD_LETTER_RETENTION_DAYS",
            raw.dead_letter_retention_days,
        ),
        ("AI_AGENTS_REQUEST_TIMEOUT_SECS", raw.request_timeout_secs),
        (
            "AI_AGENTS_CLIENT_READ_TIMEOUT_SECS",
            raw.client_read_timeout_secs,
        ),
    ];
    numbers
        .into_iter()
        .try_for_each(|(variable, value)| positive(variable, value))
}

/// The job time limits: the soft one within the hard one, the reclaim time (for the worker)
/// beyond it, and a bounded number of retries.
fn worker_limits(raw: &RawConfig, requirements: Requirements) -> Result<(), ConfigError> {
    if requirements == Requirements::Worker
        && raw.worker_reclaim_after_secs <= raw.task_time_limit_secs
    {
        return Err(ConfigError::new(
            "AI_AGENTS_WORKER_RECLAIM_AFTER_SECS",
            "must be greater than AI_AGENTS_TASK_TIME_LIMIT_SECS (a job still running must \
             never be handed to a second worker)",
        ));
    }
    if raw.task_soft_time_limit_secs > raw.task_time_limit_secs {
        return Err(ConfigError::new(
            "AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS",
            "must not exceed AI_AGENTS_TASK_TIME_LIMIT_SECS",
        ));
    }
    if raw.worker_max_retries > 30 {
        return Err(ConfigError::new(
            "AI_AGENTS_WORKER_MAX_RETRIES",
            "must be at most 30",
        ));
    }
    Ok(())
}

/// The worker's and the API's own `/metrics` addresses, when set.
fn metrics_addrs(raw: &RawConfig) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ConfigError> {
    let worker = non_empty(raw.worker_metrics_addr.clone())
        .map(|s| s.trim().parse::<SocketAddr>())
        .transpose()
        .map_err(|_| ConfigError::new("AI_AGENTS_WORKER_METRICS_ADDR", "must be HOST:PORT"))?;
    let api = non_empty(raw.api_metrics_addr.clone())
        .map(|s| resolve_bind_addr(&s).ok_or(()))
        .transpose()
        .map_err(|()| ConfigError::new("AI_AGENTS_API_METRICS_ADDR", "must be HOST:PORT"))?;
    Ok((worker, api))
}

/// The secrets of a configuration.
struct Secrets {
    admin_token: Option<SecretString>,
    encryption_key: Option<SecretString>,
    encryption_old_keys: Vec<SecretString>,
}

/// The admin token and the keys: required outside development where the command uses them;
/// every key must decode to 32 bytes, and no key may appear twice.
fn secrets(raw: &RawConfig, requirements: Requirements, dev: bool) -> Result<Secrets, ConfigError> {
    let admin_token = non_empty(raw.admin_token.clone()).map(SecretString::from);
    let encryption_key = non_empty(raw.encryption_key.clone()).map(SecretString::from);
    if requirements == Requirements::Api && !dev && admin_token.is_none() {
        return Err(ConfigError::new(
            "AI_AGENTS_ADMIN_TOKEN",
            "is required outside development",
        ));
    }
    if requirements.encryption_key() && !dev && encryption_key.is_none() {
        return Err(ConfigError::new(
            "AI_AGENTS_ENCRYPTION_KEY",
            "is required outside development",
        ));
    }
    // Comma-separated; empty entries (a trailing comma) are ignored.
    let encryption_old_keys: Vec<SecretString> = (raw.encryption_old_keys.as_deref())
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(SecretString::from)
        .collect();
    crate::crypto::Keyring::check(encryption_key.as_ref(), &encryption_old_keys)
        .map_err(key_error)?;
    Ok(Secrets {
        admin_token,
        encryption_key,
        encryption_old_keys,
    })
}

/// What a refused key means, naming its variable (and position) but not its value.
fn key_error(e: KeyError) -> ConfigError {
    match e {
        KeyError::Current => ConfigError::new(
            "AI_AGENTS_ENCRYPTION_KEY",
            "must be the base64 encoding of exactly 32 bytes",
        ),
        KeyError::Old { position } => ConfigError::new(
            "AI_AGENTS_ENCRYPTION_OLD_KEYS",
            format!("key number {position} must be the base64 encoding of exactly 32 bytes"),
        ),
        KeyError::Duplicate => ConfigError::new(
            "AI_AGENTS_ENCRYPTION_OLD_KEYS",
            "must not repeat a key, nor contain AI_AGENTS_ENCRYPTION_KEY",
        ),
    }
}

/// The pool settings of `raw`.
fn database(raw: &RawConfig, url: String, session_limits: SessionLimits) -> DatabaseConfig {
    DatabaseConfig {
        url: SecretString::from(url),
        pool_size: raw.database_pool_size,
        // A pool smaller than the default minimum simply keeps all its connections.
        min_connections: raw.database_min_connections.min(raw.database_pool_size),
        connect_timeout: Duration::from_secs(raw.database_connect_timeout_secs),
        session_limits,
    }
}

/// The worker settings of `raw`.
fn worker(raw: &RawConfig, metrics_addr: Option<SocketAddr>) -> WorkerConfig {
    WorkerConfig {
        concurrency: raw.worker_concurrency,
        max_retries: raw.worker_max_retries,
        retry_base: Duration::from_millis(raw.worker_retry_base_ms),
        reclaim_after: Duration::from_secs(raw.worker_reclaim_after_secs),
        soft_time_limit: Duration::from_secs(raw.task_soft_time_limit_secs),
        time_limit: Duration::from_secs(raw.task_time_limit_secs),
        metrics_addr,
        orphan_after: Duration::from_secs(raw.worker_orphan_after_secs),
        dead_letters: crate::queue::dead::Retention {
            max_count: raw.dead_letter_max,
            max_age: Duration::from_secs(raw.dead_letter_retention_days.saturating_mul(86_400)),
        },
    }
}

/// `HOST:PORT` to a socket address; a host name such as `localhost` is resolved.
fn resolve_bind_addr(raw: &str) -> Option<SocketAddr> {
    let raw = raw.trim();
    if let Ok(addr) = raw.parse() {
        return Some(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(raw).ok()?.next()
}

/// The session bounds, checked against each other and, for the API, against the request
/// deadline: a statement must give up before the request it serves does.
fn session_limits(
    raw: &RawConfig,
    requirements: Requirements,
) -> Result<SessionLimits, ConfigError> {
    positive(
        "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS",
        raw.database_statement_timeout_ms,
    )?;
    positive(
        "AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS",
        raw.database_lock_timeout_ms,
    )?;
    positive(
        "AI_AGENTS_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        raw.database_idle_in_transaction_timeout_ms,
    )?;
    if raw.database_lock_timeout_ms > raw.database_statement_timeout_ms {
        return Err(ConfigError::new(
            "AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS",
            "must not exceed AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS",
        ));
    }
    if requirements == Requirements::Api
        && raw.database_statement_timeout_ms >= raw.request_timeout_secs.saturating_mul(1000)
    {
        return Err(ConfigError::new(
            "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS",
            "must be below AI_AGENTS_REQUEST_TIMEOUT_SECS",
        ));
    }
    Ok(SessionLimits {
        statement_timeout: Duration::from_millis(raw.database_statement_timeout_ms),
        lock_timeout: Duration::from_millis(raw.database_lock_timeout_ms),
        idle_in_transaction_timeout: Duration::from_millis(
            raw.database_idle_in_transaction_timeout_ms,
        ),
    })
}

/// Longest time any `*_SECS` variable may give: a year. Deadlines are `now + limit`, which a
/// value near `u64::MAX` seconds would overflow on every request rather than fail at start.
const MAX_SECS: u64 = 365 * 24 * 3600;

fn positive(variable: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::new(variable, "must be greater than zero"))
    } else if variable.ends_with("_SECS") && value > MAX_SECS {
        Err(ConfigError::new(
            variable,
            "must be at most 31536000 (a year, in seconds)",
        ))
    } else if variable.ends_with("_MS") && value > MAX_SECS * 1000 {
        Err(ConfigError::new(
            variable,
            "must be at most 31536000000 (a year, in milliseconds)",
        ))
    } else {
        Ok(())
    }
}
