//! `ai-agents-api healthcheck`: a probe for images that have no shell and no curl.
//!
//! It sends `GET /health` to the port of `AI_AGENTS_BIND_ADDR` on loopback (a wildcard bind
//! address is not connectable) and succeeds only on a 200. A raw HTTP/1.1 request keeps an HTTP
//! client library out of the binary.

use std::{net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered on the port.
    #[error("cannot connect to {0}")]
    Connect(SocketAddr, #[source] std::io::Error),
    /// The server answered with something other than 200.
    #[error("GET /health answered: {0}")]
    Status(String),
    /// No answer in time.
    #[error("GET /health did not answer within 3 s")]
    Timeout,
}

/// Where to reach our own server bound at `bind`.
pub fn target(bind: SocketAddr) -> SocketAddr {
    let ip = if bind.ip().is_unspecified() {
        match bind {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        }
    } else {
        bind.ip()
    };
    SocketAddr::new(ip, bind.port())
}

/// Probes `GET /health` on `addr`.
pub async fn probe(addr: SocketAddr) -> Result<(), ProbeError> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeError::Connect(addr, e))?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| ProbeError::Connect(addr, e))?;
        let mut head = vec![0_u8; 64];
        let n = stream
            .read(&mut head)
            .await
            .map_err(|e| ProbeError::Connect(addr, e))?;
        let text = String::from_utf8_lossy(&head[..n]);
        let status_line = text.lines().next().unwrap_or_default().to_owned();
        if status_line.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            Err(ProbeError::Status(status_line))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .map_err(|_| ProbeError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_probed_on_loopback() {
        let addr: SocketAddr = "0.0.0.0:8000".parse().expect("addr");
        assert_eq!(
            target(addr),
            "127.0.0.1:8000".parse::<SocketAddr>().expect("addr")
        );
        let addr: SocketAddr = "[::]:9000".parse().expect("addr");
        assert_eq!(
            target(addr),
            "[::1]:9000".parse::<SocketAddr>().expect("addr")
        );
        let addr: SocketAddr = "10.1.2.3:80".parse().expect("addr");
        assert_eq!(target(addr), addr);
    }
}
