//! Waiting for SIGTERM or SIGINT.
//!
//! The first signal starts a graceful shutdown; a second one ends the process at once, for the
//! operator who does not want to wait for the grace period. The handlers are installed before
//! any slow start-up step (migrations waiting for the database, Redis not up yet): a signal then
//! ends the process cleanly with 0 rather than by the signal's default action.

use tokio_util::sync::CancellationToken;

/// Installs the handlers now and returns a token cancelled on the first SIGTERM or SIGINT; a
/// second signal exits the process with code 130. Needs a Tokio runtime.
pub fn listen() -> CancellationToken {
    let mut signals = Signals::install();
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown signal received; finishing in-flight work");
        trigger.cancel();
        signals.recv().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    stop
}

/// SIGTERM and SIGINT, registered with the runtime when created.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next SIGTERM or SIGINT (Ctrl-C where the Unix signals are unavailable).
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.interrupt.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = next(self.term.as_mut()) => {}
                () = next(self.interrupt.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
