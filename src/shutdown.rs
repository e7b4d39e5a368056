//! Waiting for SIGTERM or SIGINT.
//!
//! The first signal starts a graceful shutdown; a second one ends the process at once, for the
//! operator who does not want to wait for the grace period.

/// Resolves on the first SIGTERM or SIGINT; a second signal exits the process with code 130.
pub async fn signal() {
    wait_for_one().await;
    tracing::info!("shutdown signal received; finishing in-flight work");
    tokio::spawn(async {
        wait_for_one().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_one() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
