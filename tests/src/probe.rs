//! Minimal readiness probes over plain TCP, so the harness needs no HTTP client of its own.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `Ok` when something accepts TCP connections on 127.0.0.1:`port`.
pub async fn tcp_accepts(port: u16) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connecting to 127.0.0.1:{port}: {e}")),
        Err(_) => Err(format!("connecting to 127.0.0.1:{port} timed out")),
    }
}

/// A plaintext HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the status code and the body.
/// HTTP/1.0 makes the server close the connection after the response, so reading to the end
/// reads exactly one response.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending GET {path}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("reading the response to GET {path}: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {path} on port {port} timed out"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response to GET {path}: {head:?}"))?;
    Ok((status, body.to_string()))
}
