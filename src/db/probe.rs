//! The readiness probe's connection to PostgreSQL.
//!
//! One connection of its own, outside the request pool: a probe that queued behind request
//! traffic would call a saturated pool an outage and take every replica out of service at once,
//! the moment load is highest. It is kept here rather than in a sqlx pool of one because a pool
//! waits without a bound for the ping it sends to every connection that comes back: a failover
//! during that ping (the old server neither answers nor resets the connection) would keep the
//! only connection there for as long as the kernel keeps the socket, about 15 minutes, and
//! every probe meanwhile would say "disconnected". Here a probe that gets no answer in time
//! drops its connection, and the next probe opens a new one.
//!
//! Probes that arrive while one is under way take its answer rather than asking again. The
//! endpoint is open to anyone: asked one after another, a burst of probes on a slow but healthy
//! database would keep the kubelet's waiting until it ran out of time, and that probe would then
//! drop a connection that was only slow.

use std::time::Duration;

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::{sync::Mutex, time::Instant};

use super::{DbSetupError, app_options};
use crate::config::DatabaseConfig;

/// The probe's connection, opened on first use and again when it fails.
pub struct Probe {
    options: PgConnectOptions,
    state: Mutex<State>,
}

/// What the probes share, one at a time.
#[derive(Default)]
struct State {
    connection: Option<PgConnection>,
    /// When the last probe ended, and whether the database answered it.
    last: Option<(Instant, bool)>,
}

impl Probe {
    /// A probe with the session options of `config`; connects to nothing yet.
    pub fn new(config: &DatabaseConfig) -> Result<Self, DbSetupError> {
        Ok(Self {
            options: app_options(config)?,
            state: Mutex::new(State::default()),
        })
    }

    /// Whether PostgreSQL answers within `limit`, connecting if need be; a probe already under
    /// way answers for this one. It answers "no" only when the database cannot be reached in
    /// time, never because requests or other probes keep it busy.
    pub async fn answers(&self, limit: Duration) -> bool {
        let asked = Instant::now();
        let deadline = asked + limit;
        let Ok(mut state) = tokio::time::timeout_at(deadline, self.state.lock()).await else {
            return false;
        };
        // A probe that ended after this one was asked was under way meanwhile: its answer is as
        // fresh as this one's would be.
        if let Some((ended, up)) = state.last
            && ended >= asked
        {
            return up;
        }
        let slot = &mut state.connection;
        let answered = tokio::time::timeout_at(deadline, async {
            if let Some(connection) = slot.as_mut()
                && sqlx::query("SELECT 1").execute(connection).await.is_ok()
            {
                return Ok(());
            }
            // No connection yet, or one that died with a restart: a new one, in the same limit.
            let connection = slot.insert(PgConnection::connect_with(&self.options).await?);
            sqlx::query("SELECT 1").execute(connection).await.map(drop)
        })
        .await;
        let up = matches!(answered, Ok(Ok(())));
        if !up {
            // Dropped, not closed: closing would wait on a server that does not answer.
            *slot = None;
        }
        state.last = Some((Instant::now(), up));
        up
    }
}
