//! Faults a test injects without disturbing the shared services: a TCP relay it can cut (an
//! outage of PostgreSQL or Redis as the service sees it), freeze, or strand (a failover as the
//! service sees it) or slow down (a healthy server far away or under load), and a Redis of its
//! own that it may restart, freeze or stop.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch};

use super::{closed_port, eventually, signal};

/// A TCP relay in front of a real server, which a test can cut (an outage) or freeze (a server
/// stopped with SIGSTOP, as its clients see it: connections stay open, nothing is answered).
pub struct Outage {
    /// The relay's address.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    frozen: watch::Sender<bool>,
    /// How long each chunk from the server waits before it is delivered.
    latency: watch::Sender<Duration>,
    /// Connections numbered below this are stranded.
    stranded: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
}

impl Outage {
    /// Relays to `target` (`host:port`).
    pub async fn relay(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0_u64);
        let (frozen, _) = watch::channel(false);
        let (latency, _) = watch::channel(Duration::ZERO);
        let (stranded, _) = watch::channel(0_u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let target = target.to_owned();
        let (state, cuts, freezes) = (Arc::clone(&up), cut.clone(), frozen.clone());
        let latencies = latency.clone();
        let (strands, count) = (stranded.clone(), Arc::clone(&accepted));
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !state.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = cuts.subscribe();
                let number = count.fetch_add(1, Ordering::SeqCst);
                let hold = |latency: Option<&watch::Sender<Duration>>| Hold {
                    frozen: freezes.subscribe(),
                    stranded: strands.subscribe(),
                    latency: latency.map(watch::Sender::subscribe),
                    number,
                };
                let (to_server, to_client) = (hold(None), hold(Some(&latencies)));
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_read, client_write) = inbound.into_split();
                    let (server_read, server_write) = outbound.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, to_server) => {}
                        () = pump(server_read, client_write, to_client) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            frozen,
            latency,
            stranded,
            accepted,
        }
    }

    /// Delays every answer of the server by `latency` (zero: no delay); nothing is lost.
    pub fn slow_down(&self, latency: Duration) {
        self.latency.send_replace(latency);
    }

    /// Holds for good every byte of the connections open now, which stay open; new ones are
    /// relayed. A failover as its clients see it: the old server neither answers nor resets
    /// them, the address reaches a live one.
    pub fn strand(&self) {
        self.stranded
            .send_replace(self.accepted.load(Ordering::SeqCst));
    }

    /// Holds every byte in both directions, connections kept open (a SIGSTOPped server).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Delivers what was held and relays again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// When one direction of a relayed connection holds its bytes.
struct Hold {
    /// While this says so.
    frozen: watch::Receiver<bool>,
    /// For good, once this is above the connection's number.
    stranded: watch::Receiver<u64>,
    /// Each chunk waits this long (the server's direction only).
    latency: Option<watch::Receiver<Duration>>,
    number: u64,
}

/// Copies `from` to `to`, holding each chunk as `hold` says; ends when either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: Hold,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *hold.stranded.borrow() > hold.number {
            std::future::pending::<()>().await;
        }
        if hold.frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        let delay = hold
            .latency
            .as_ref()
            .map_or(Duration::ZERO, |l| *l.borrow());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A redis-server of the test's own, with AOF, in a temporary directory: for tests that
/// restart, freeze or stop Redis without disturbing the shared one.
pub struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    /// Starts it on a free port and waits until it answers.
    pub async fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("ai-agents-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Self {
            port: closed_port(),
            dir,
            child: None,
        };
        redis.launch().await;
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts (is it on PATH?)");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok_and(|p| p == "PONG")
            }
        })
        .await;
        assert!(up, "own redis-server did not come up");
    }

    fn signal(&self, name: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("running");
        assert!(signal(pid, name), "kill -{name}");
    }

    /// SIGSTOP: the server keeps its connections but answers nothing (a frozen Redis).
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`OwnRedis::freeze`]: it executes whatever was sent meanwhile.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// SIGTERM (a graceful shutdown that flushes the AOF), then the same port and directory.
    pub async fn restart(&mut self) {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis-server stops")
            .expect("wait");
        self.launch().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
