//! The commands of `ai-agents-api`: serve, migrate, revert, healthcheck, secrets.

use crate::{
    api::Application,
    boot::{BoxError, failed},
    config::Config,
    crypto::Keyring,
    db, healthcheck,
    secrets_admin::{self, Mode},
    shutdown,
};

/// Serves HTTP until SIGTERM/SIGINT, then drains. A signal while it is still starting ends it
/// with 0 (a migration under way is rolled back with its dropped connection).
pub async fn serve(config: Config) -> Result<(), BoxError> {
    let stop = shutdown::listen();
    let app = tokio::select! {
        app = Application::build(config) => app?,
        () = stop.cancelled() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    app.run_until_stopped(stop.cancelled_owned()).await?;
    Ok(())
}

/// Applies the pending migrations, or reverts the last one. On one connection: its error says
/// why PostgreSQL could not be reached, where a pool's would only say that it timed out.
pub async fn migrate(config: Config, revert: bool) -> Result<(), BoxError> {
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

/// `GET /health` of our own server (found through the port of `AI_AGENTS_BIND_ADDR`).
pub async fn healthcheck(config: Config) -> Result<(), BoxError> {
    healthcheck::probe(healthcheck::target(config.bind_addr))
        .await
        .map_err(failed("unhealthy"))?;
    Ok(())
}

/// Runs `secrets verify|rotate`; failures are listed on stdout and make the exit non-zero.
pub async fn secrets(config: Config, mode: Mode) -> Result<(), BoxError> {
    let keyring = Keyring::load(config.encryption_key.as_ref(), &config.encryption_old_keys)?;
    let pool = db::connect_lazy(&config.database)?;
    let summary = secrets_admin::run(&pool, &keyring, mode, &mut std::io::stdout()).await;
    pool.close().await;
    match summary?.failed {
        0 => Ok(()),
        failed => Err(format!("{failed} stored secret(s) could not be decrypted").into()),
    }
}
