//! `inferscale-operator probe URL…`: one plain-HTTP GET per URL that must answer 2xx. The chart's
//! `helm test` runs it in the operator image, which has no shell and no curl; it needs nothing but
//! the cluster network (no internet). Blocking std I/O: one short request, no runtime needed.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest URL accepted (they come from the chart's values).
const MAX_URL_LEN: usize = 2048;
/// The most of the response read: the status line is all that matters.
const MAX_RESPONSE_HEAD: u64 = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0:?} is not an http://host[:port][/path] URL")]
    InvalidUrl(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: not an HTTP response: {line:?}")]
    Malformed { url: String, line: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
}

/// Host, port and path of an `http://` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses `http://host[:port][/path]` (no https, user info or fragments: the probe only calls
/// in-cluster Services).
pub fn parse(url: &str) -> Result<Target, ProbeError> {
    let invalid = || ProbeError::InvalidUrl(url.chars().take(100).collect());
    if url.len() > MAX_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains('#') {
        return Err(invalid());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| invalid())?),
        None => (authority, 80),
    };
    if host.is_empty() || port == 0 {
        return Err(invalid());
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_of(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// GETs `url`; Ok with the status when it is 2xx.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let t = parse(url)?;
    let addr = format!("{}:{}", t.host, t.port);
    let connect_err = |source| ProbeError::Connect {
        addr: addr.clone(),
        source,
    };
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err(std::io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout).map_err(connect_err)?;
    let io = |source| ProbeError::Io {
        url: url.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: inferscale-operator-probe\r\nConnection: close\r\n\r\n",
        t.path, t.host
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE_HEAD);
    // The status line is enough; stop at the first line end.
    let mut byte = [0u8; 1];
    while limited.read(&mut byte).map_err(io)? == 1 {
        if byte[0] == b'\n' {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).trim_end().to_owned();
    let status = status_of(&line).ok_or_else(|| ProbeError::Malformed {
        url: url.to_owned(),
        line: line.chars().take(100).collect(),
    })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_in_cluster_urls() {
        assert_eq!(
            parse("http://rel-inferscale-metrics.ns.svc:8080/healthz").unwrap(),
            Target {
                host: "rel-inferscale-metrics.ns.svc".to_owned(),
                port: 8080,
                path: "/healthz".to_owned()
            }
        );
        assert_eq!(parse("http://svc").unwrap().port, 80);
        assert_eq!(parse("http://svc").unwrap().path, "/");
    }

    #[test]
    fn refuses_what_it_cannot_call() {
        for bad in [
            "https://svc/healthz",
            "svc:8080",
            "http://",
            "http://:80/",
            "http://user@svc/",
            "http://svc:0/",
            "http://svc:99999/",
            "http://svc/a b",
            "http://svc/\r\nX-Injected: 1",
        ] {
            assert!(
                matches!(parse(bad), Err(ProbeError::InvalidUrl(_))),
                "{bad}"
            );
        }
        assert!(parse(&format!("http://svc/{}", "a".repeat(3000))).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_of("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_of("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_of("HTTP/1.1 2000 x"), None);
    }

    /// A one-shot server on 127.0.0.1 answering `reply`; returns its URL.
    fn serve_once(reply: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(reply.as_bytes());
        });
        format!("http://127.0.0.1:{port}/healthz")
    }

    #[test]
    fn a_2xx_passes_and_anything_else_fails() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(probe(&ok, Duration::from_secs(5)).unwrap(), 200);
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert!(matches!(
            probe(&down, Duration::from_secs(5)),
            Err(ProbeError::Status { status: 503, .. })
        ));
        let garbage = serve_once("hello\r\n");
        assert!(matches!(
            probe(&garbage, Duration::from_secs(5)),
            Err(ProbeError::Malformed { .. })
        ));
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/");
        assert!(matches!(
            probe(&url, Duration::from_secs(2)),
            Err(ProbeError::Connect { .. })
        ));
    }
}
