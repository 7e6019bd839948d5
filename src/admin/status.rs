//! `snakeway status`: asks the running server's admin API for its health and upstreams and
//! prints them for a person. Also the client `snakeway reload` uses for `POST /admin/reload`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use snakeway_config::Admin;

/// Time allowed for each admin request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest admin answer read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Fetches `/admin/health` and `/admin/upstreams` from the admin listener of `admin` and
/// renders them as text.
pub(crate) fn report(admin: &Admin) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = connect_addr(admin.listen);
        let token = admin.token.as_deref();
        let health = fetch(addr, "/admin/health", token).await?;
        let upstreams = fetch(addr, "/admin/upstreams", token).await?;
        Ok(render(addr, &health, &upstreams))
    })
}

/// The server's answer to `POST /admin/reload`.
#[derive(Debug)]
pub(crate) enum ReloadAnswer {
    /// Applied: the new epoch.
    Reloaded(u64),
    /// Refused (422): the problems, one per line; the running configuration stays.
    Refused(String),
}

/// Asks the admin listener of `admin` to reload, waiting at most `wait` for the answer.
///
/// An error whose root cause is an [`std::io::Error`] means the admin API could not be reached
/// at all.
pub(crate) fn reload(admin: &Admin, wait: Duration) -> anyhow::Result<ReloadAnswer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = connect_addr(admin.listen);
        let path = "/admin/reload";
        let (status, body) =
            exchange(addr, Method::POST, path, admin.token.as_deref(), wait).await?;
        let json = || -> anyhow::Result<Value> {
            serde_json::from_slice(&body).with_context(|| format!("{path} did not answer JSON"))
        };
        match status {
            StatusCode::OK => json()?["epoch"]
                .as_u64()
                .map(ReloadAnswer::Reloaded)
                .ok_or_else(|| anyhow!("{path} answered 200 without an epoch")),
            StatusCode::UNPROCESSABLE_ENTITY => {
                Ok(ReloadAnswer::Refused(render_problems(&json()?)))
            }
            status => bail!(
                "the admin API at {addr} answered {path} with {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        }
    })
}

/// The problems of a 422 answer (`{"problems": [{file, key, message}]}`), one per line, as
/// `snakeway config check` prints them.
fn render_problems(answer: &Value) -> String {
    let empty = Vec::new();
    let lines: Vec<String> = answer["problems"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|p| {
            let file = p["file"].as_str().unwrap_or("?");
            let message = p["message"].as_str().unwrap_or("?");
            match p["key"].as_str() {
                Some(key) if !key.is_empty() => format!("{file}: {key}: {message}"),
                _ => format!("{file}: {message}"),
            }
        })
        .collect();
    lines.join("\n")
}

/// Where to connect for a listener bound to `listen`: its own address, or loopback of the
/// same family for an unspecified one (`0.0.0.0`, `[::]`).
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET path` on the admin listener at `addr`, parsed as JSON.
async fn fetch(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let (status, body) = exchange(addr, Method::GET, path, token, TIMEOUT).await?;
    if status != StatusCode::OK {
        bail!("the admin API at {addr} answered {path} with {status}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{path} did not answer JSON"))
}

/// One bodiless request to the admin listener at `addr`, within `timeout`: the status and the
/// body (at most [`MAX_BODY`]). A 401 is an error naming the token.
async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| {
                format!("cannot connect to the admin API at {addr} (is the server running?)")
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string());
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let res = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        if status == StatusCode::UNAUTHORIZED {
            bail!("the admin API at {addr} refused the token (admin.token)");
        }
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("the admin API at {addr} did not answer {path} within {timeout:?}"))?
}

/// The text `snakeway status` prints.
fn render(addr: SocketAddr, health: &Value, upstreams: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "snakeway {} at {addr}: {}, epoch {}, up {}",
        health["version"].as_str().unwrap_or("?"),
        health["status"].as_str().unwrap_or("?"),
        health["epoch"],
        uptime(health["uptime_seconds"].as_u64().unwrap_or(0)),
    );
    let header = [
        "SERVICE",
        "STRATEGY",
        "UPSTREAM",
        "WEIGHT",
        "CIRCUIT",
        "HEALTH",
        "IN-FLIGHT",
        "IDLE",
        "REQUESTS",
        "FAILURES",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    let empty = Vec::new();
    for svc in upstreams["services"].as_array().unwrap_or(&empty) {
        for u in svc["upstreams"].as_array().unwrap_or(&empty) {
            let plain = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".to_owned(),
                v => v.to_string(),
            };
            rows.push(vec![
                plain(&svc["name"]),
                plain(&svc["strategy"]),
                plain(&u["url"]),
                plain(&u["weight"]),
                plain(&u["circuit"]),
                plain(&u["health"]),
                plain(&u["in_flight"]),
                plain(&u["idle_connections"]),
                plain(&u["requests"]),
                plain(&u["failures"]),
            ]);
        }
    }
    if rows.len() == 1 {
        out.push_str("no services configured\n");
        return out;
    }
    out.push('\n');
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1d 2h 3m 4s`, leaving out leading zero units.
fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_leaves_out_leading_zero_units() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(65), "1m 5s");
        assert_eq!(uptime(3600), "1h 0m 0s");
        assert_eq!(uptime(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert_eq!(connect_addr(any), "127.0.0.1:9901".parse().unwrap());
        let any6: SocketAddr = "[::]:9901".parse().unwrap();
        assert_eq!(connect_addr(any6), "[::1]:9901".parse().unwrap());
        let given: SocketAddr = "10.0.0.1:9901".parse().unwrap();
        assert_eq!(connect_addr(given), given);
    }
}
