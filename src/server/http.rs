//! The monitoring endpoint on `[metrics] listen`: `/metrics` for Prometheus, `/healthz` for
//! "the process is up", `/readyz` for "mail can flow" (rules loaded, upstream and clamd
//! reachable where needed).
//!
//! A deliberately small HTTP/1.1 server: GET and HEAD, one request per connection
//! (`Connection: close`), request head at most 8 KiB and 5 s. Scrapers, load balancers and
//! `curl` need nothing more, and it keeps a web framework out of a mail filter.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Services, health};
use crate::metrics::metrics;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, services: Arc<Services>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let services = services.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IO_TIMEOUT, handle(stream, &services)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One response: status line, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

async fn handle(mut stream: TcpStream, services: &Services) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return write(
                &mut stream,
                Response::text("431 Request Header Fields Too Large", ""),
                false,
            )
            .await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    let response = if method != "GET" && !head_only {
        Response::text("405 Method Not Allowed", "only GET and HEAD\n")
    } else {
        route(path, services).await
    };
    write(&mut stream, response, head_only).await
}

async fn route(path: &str, services: &Services) -> Response {
    match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics().render(),
        },
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/readyz" => {
            let r = health::readiness(services).await;
            let status = if r.ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            Response::text(status, r.report())
        }
        "/" => Response::text(
            "200 OK",
            "mailwarden: /metrics (Prometheus), /healthz, /readyz\n",
        ),
        _ => Response::text(
            "404 Not Found",
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

async fn write(stream: &mut TcpStream, r: Response, head_only: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}
