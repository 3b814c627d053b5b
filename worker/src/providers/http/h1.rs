//! The worker's own HTTP/1.1 client, for plain-HTTP upstreams: vLLM in the cluster, and any
//! OpenAI-compatible server reached without TLS.
//!
//! Why not reqwest there: each upstream call through reqwest and hyper-util cost a task hop
//! (the call hands its request to a connection task over a channel and waits for the answer on
//! another), a redirect layer that parses the URL again, and a pool checkout racing a connect;
//! the upstream client was over half of the worker's CPU per call (BENCHMARKS.md, issue 14).
//! Here the calling task does the exchange itself: one write of head and body, reads until the
//! response is complete, and the connection goes back to a per-origin pool.
//!
//! What it supports is what an upstream answer to `POST` needs: `Content-Length` and chunked
//! bodies, bodies delimited by the connection closing, informational (1xx) heads skipped,
//! `Connection: close` and HTTP/1.0 honoured. Everything read is bounded ([`MAX_HEAD_BYTES`],
//! [`MAX_BODY_BYTES`]). HTTPS, proxies and URLs with user info stay with reqwest.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head accepted (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one response head.
const MAX_HEADERS: usize = 64;
/// Largest response body accepted. An LLM answer is kilobytes; an upstream that sends more is
/// broken or hostile, and the worker would otherwise hold all of it in memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Idle connections kept per origin, and how long one may stay idle.
const MAX_IDLE: usize = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Room read at a time; most answers fit in one read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Protocol(String),
    /// The request could not be written as HTTP (a header value with a line break, say).
    #[error("{0}")]
    Request(String),
}

/// A response: status, the headers when the status is not a success (the providers read their
/// error format from them), and the whole body.
pub struct H1Response {
    pub status: u16,
    pub headers: Option<http::HeaderMap>,
    pub body: Bytes,
}

/// Where a plain-HTTP URL's connections go, and the idle ones kept for it.
pub struct Origin {
    target: Target,
    /// The `Host` header: the URL's host and port as written.
    host: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

enum Target {
    Ip(std::net::SocketAddr),
    Name(String, u16),
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// An open connection and the bytes read from it that were not used yet (none, between
/// exchanges on a connection kept for reuse).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Origin {
    /// The origin of a URL this client serves: `http`, no user info. `None` otherwise.
    pub fn for_url(url: &url::Url, connect_timeout: Duration) -> Option<Self> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let port = url.port_or_known_default()?;
        let target = match url.host()? {
            url::Host::Ipv4(ip) => Target::Ip((ip, port).into()),
            url::Host::Ipv6(ip) => Target::Ip((ip, port).into()),
            url::Host::Domain(name) => Target::Name(name.to_owned(), port),
        };
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        Some(Self {
            target,
            host,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// POSTs `body` to `path` (with its query) and reads the whole response. A connection from
    /// the pool that turns out closed by the server (an idle timeout on its side) before any
    /// byte of the answer came back is replaced by a new one, once.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<H1Response, H1Error> {
        let request = self.request_bytes(path, headers, body)?;
        let mut conn = self.checkout();
        loop {
            let reused = conn.is_some();
            let mut c = match conn.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            match exchange(&mut c, &request).await {
                Ok((response, reusable)) => {
                    if reusable {
                        self.checkin(c);
                    }
                    return Ok(response);
                }
                Err(Failure::ClosedBeforeAnswer(_)) if reused => continue,
                Err(Failure::ClosedBeforeAnswer(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// Head and body in one buffer, so the request leaves in one `send`.
    fn request_bytes(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<u8>, H1Error> {
        let mut request = Vec::with_capacity(256 + body.len());
        // Writing to a Vec cannot fail.
        let _ = write!(
            request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        for (name, value) in headers {
            check_header(name, value)?;
            let _ = write!(request, "{name}: {value}\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        Ok(request)
    }

    /// The most recently used idle connection that is not too old; older ones are closed.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest are at the front: close the ones idle too long, then make room.
        let stale = idle
            .iter()
            .take_while(|e| now.duration_since(e.since) >= IDLE_TIMEOUT)
            .count();
        let excess = (idle.len() - stale + 1).saturating_sub(MAX_IDLE);
        idle.drain(..stale + excess);
        idle.push(Idle { conn, since: now });
    }

    async fn connect(&self) -> Result<Conn, H1Error> {
        let connecting = async {
            match &self.target {
                Target::Ip(addr) => TcpStream::connect(addr).await,
                Target::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                H1Error::Connect(format!(
                    "no connection within {}s (upstream.connect_timeout_secs)",
                    self.connect_timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| H1Error::Connect(e.to_string()))?;
        // Small requests leave at once instead of waiting for an ACK (Nagle).
        stream
            .set_nodelay(true)
            .map_err(|e| H1Error::Connect(e.to_string()))?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }
}

/// A header name and value that cannot end the line early: a secret with a line break in it
/// would otherwise add headers of its own to the request.
fn check_header(name: &str, value: &str) -> Result<(), H1Error> {
    let bad_name = name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let bad_value = value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f);
    if bad_name || bad_value {
        return Err(H1Error::Request(format!(
            "the {name} header has characters HTTP does not allow"
        )));
    }
    Ok(())
}

enum Failure {
    /// The connection ended (or failed) before any byte of the answer arrived.
    ClosedBeforeAnswer(H1Error),
    Other(H1Error),
}

/// Writes the request and reads the response; also says whether the connection can be reused.
async fn exchange(c: &mut Conn, request: &[u8]) -> Result<(H1Response, bool), Failure> {
    if let Err(e) = c.stream.write_all(request).await {
        return Err(Failure::ClosedBeforeAnswer(H1Error::Io(e.to_string())));
    }
    let head = loop {
        // What is buffered first: one read may bring a 1xx head and the final one together.
        match parse_head(&c.buf).map_err(Failure::Other)? {
            Parsed::Head(head) => break head,
            Parsed::Informational(len) => {
                c.buf.advance(len);
                continue;
            }
            Parsed::Partial => {}
        }
        match read_more(c).await {
            Ok(0) if c.buf.is_empty() => {
                return Err(Failure::ClosedBeforeAnswer(H1Error::Io(
                    "the upstream closed the connection before answering".into(),
                )));
            }
            Ok(0) => return Err(Failure::Other(cut_short())),
            Ok(_) => {}
            Err(e) if c.buf.is_empty() => return Err(Failure::ClosedBeforeAnswer(e)),
            Err(e) => return Err(Failure::Other(e)),
        }
    };
    c.buf.advance(head.len);
    read_body(c, head).await.map_err(Failure::Other)
}

/// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream.
async fn read_more(c: &mut Conn) -> Result<usize, H1Error> {
    c.buf.reserve(READ_CHUNK);
    c.stream
        .read_buf(&mut c.buf)
        .await
        .map_err(|e| H1Error::Io(e.to_string()))
}

/// The parts of a response head the exchange needs.
#[derive(Debug)]
struct Head {
    /// Bytes of the head, up to and including the blank line.
    len: usize,
    status: u16,
    framing: Framing,
    /// The connection may carry another exchange after this one.
    keep_alive: bool,
    /// Kept only for statuses other than 2xx.
    headers: Option<http::HeaderMap>,
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

#[derive(Debug)]
enum Parsed {
    Partial,
    /// A 1xx head of `len` bytes, to skip.
    Informational(usize),
    Head(Head),
}

fn parse_head(buf: &[u8]) -> Result<Parsed, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(H1Error::Protocol(format!(
                "the upstream's response head is longer than {MAX_HEAD_BYTES} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(H1Error::Protocol(format!(
                "the upstream's response is not HTTP/1.1 ({e})"
            )));
        }
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Parsed::Informational(len));
    }
    let mut keep_alive = response.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    H1Error::Protocol("the upstream sent an unreadable Content-Length".into())
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Protocol(
                    "the upstream sent two different Content-Length headers".into(),
                ));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` as the last coding is readable; anything else ends at close.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                keep_alive = false;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    if let Framing::Length(n) = framing
        && n > MAX_BODY_BYTES
    {
        return Err(too_large());
    }
    let headers = (!(200..300).contains(&status)).then(|| header_map(response.headers));
    Ok(Parsed::Head(Head {
        len,
        status,
        framing,
        keep_alive,
        headers,
    }))
}

fn header_map(headers: &[httparse::Header<'_>]) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn too_large() -> H1Error {
    H1Error::Protocol(format!(
        "the upstream's response body is larger than {MAX_BODY_BYTES} bytes"
    ))
}

/// Reads the body the head announced. The buffer holds what was read past the head.
async fn read_body(c: &mut Conn, head: Head) -> Result<(H1Response, bool), H1Error> {
    let (body, reusable) = match head.framing {
        Framing::Length(n) => {
            while c.buf.len() < n {
                c.buf.reserve(n - c.buf.len());
                if read_more(c).await? == 0 {
                    return Err(cut_short());
                }
            }
            let body = c.buf.split_to(n).freeze();
            // Bytes beyond the answer were never asked for: do not reuse such a connection.
            (body, head.keep_alive && c.buf.is_empty())
        }
        Framing::Chunked => {
            let body = read_chunked(c).await?;
            (body, head.keep_alive && c.buf.is_empty())
        }
        Framing::Close => {
            while read_more(c).await? > 0 {
                if c.buf.len() > MAX_BODY_BYTES {
                    return Err(too_large());
                }
            }
            (c.buf.split().freeze(), false)
        }
    };
    let response = H1Response {
        status: head.status,
        headers: head.headers,
        body,
    };
    Ok((response, reusable))
}

fn cut_short() -> H1Error {
    H1Error::Protocol("the upstream closed the connection in the middle of its answer".into())
}

/// Decodes a chunked body, trailers skipped.
async fn read_chunked(c: &mut Conn) -> Result<Bytes, H1Error> {
    let mut body = BytesMut::new();
    loop {
        match next_chunk(&c.buf)? {
            Chunk::Partial => {
                if read_more(c).await? == 0 {
                    return Err(cut_short());
                }
            }
            Chunk::Data { header, size } => {
                if body.len() + size > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                // The data and its CRLF.
                while c.buf.len() < header + size + 2 {
                    if read_more(c).await? == 0 {
                        return Err(cut_short());
                    }
                }
                if &c.buf[header + size..header + size + 2] != b"\r\n" {
                    return Err(H1Error::Protocol(
                        "the upstream's chunked body is malformed".into(),
                    ));
                }
                body.extend_from_slice(&c.buf[header..header + size]);
                c.buf.advance(header + size + 2);
            }
            Chunk::Last { len } => {
                c.buf.advance(len);
                return Ok(body.freeze());
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    Partial,
    /// A chunk of `size` bytes whose data starts `header` bytes into the buffer.
    Data {
        header: usize,
        size: usize,
    },
    /// The last chunk and the trailers: `len` bytes in all.
    Last {
        len: usize,
    },
}

/// Reads the chunk that starts the buffer.
fn next_chunk(buf: &[u8]) -> Result<Chunk, H1Error> {
    let malformed = || H1Error::Protocol("the upstream's chunked body is malformed".into());
    let Some(line_end) = find_crlf(buf) else {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(malformed())
        } else {
            Ok(Chunk::Partial)
        };
    };
    let line = &buf[..line_end];
    let digits = line
        .split(|&b| b == b';')
        .next()
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    let size = std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.len() <= 16)
        .and_then(|d| usize::from_str_radix(d, 16).ok())
        .ok_or_else(malformed)?;
    if size > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let header = line_end + 2;
    if size > 0 {
        return Ok(Chunk::Data { header, size });
    }
    // Trailers, each ending in CRLF, then an empty line.
    let mut at = header;
    loop {
        let Some(end) = find_crlf(&buf[at..]) else {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(malformed())
            } else {
                Ok(Chunk::Partial)
            };
        };
        at += end + 2;
        if end == 0 {
            return Ok(Chunk::Last { len: at });
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes()).unwrap() {
            Parsed::Head(h) => h,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn framing_and_reuse_follow_the_head() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, Framing::Length(12), true)
        );
        assert!(h.headers.is_none(), "a success keeps no headers");
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
        let h = head("HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.headers.unwrap()["retry-after"], "3");
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_heads_wait() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\n";
        assert!(
            matches!(parse_head(raw.as_bytes()).unwrap(), Parsed::Informational(n) if n == raw.len())
        );
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(),
            Parsed::Partial
        ));
    }

    #[test]
    fn hostile_heads_are_refused_with_a_reason() {
        let err = |raw: &[u8]| match parse_head(raw) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("accepted {p:?}"),
        };
        assert!(err(b"garbage\r\n\r\n").contains("not HTTP/1.1"));
        assert!(
            err(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
                .contains("two different Content-Length")
        );
        assert!(err(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").contains("Content-Length"));
        assert!(
            err(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n").contains("larger than")
        );
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert!(err(endless.as_bytes()).contains("longer than"));
    }

    #[test]
    fn chunks_are_read_with_extensions_and_trailers() {
        assert_eq!(
            next_chunk(b"5;ext=1\r\nhello\r\n").unwrap(),
            Chunk::Data { header: 9, size: 5 }
        );
        assert_eq!(
            next_chunk(b"1A\r\n").unwrap(),
            Chunk::Data {
                header: 4,
                size: 26
            }
        );
        assert_eq!(next_chunk(b"0\r\n\r\n").unwrap(), Chunk::Last { len: 5 });
        assert_eq!(
            next_chunk(b"0\r\nx-t: 1\r\n\r\n").unwrap(),
            Chunk::Last { len: 13 }
        );
        assert_eq!(next_chunk(b"0\r\nx-t: 1\r\n").unwrap(), Chunk::Partial);
        assert_eq!(next_chunk(b"5").unwrap(), Chunk::Partial);
        assert!(next_chunk(b"zz\r\n").is_err());
        assert!(next_chunk(b"fffffffffffffffff\r\n").is_err());
        assert!(
            next_chunk(b"8000000\r\n")
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }

    #[test]
    fn a_header_value_cannot_add_headers() {
        assert!(check_header("authorization", "Bearer sk-1").is_ok());
        assert!(check_header("authorization", "Bearer sk\r\nx-evil: 1").is_err());
        assert!(check_header("authorization", "Bearer \0").is_err());
        assert!(check_header("bad name", "v").is_err());
        assert!(check_header("", "v").is_err());
    }

    #[test]
    fn only_plain_http_without_user_info_is_served() {
        let origin =
            |u: &str| Origin::for_url(&url::Url::parse(u).unwrap(), Duration::from_secs(1));
        assert_eq!(
            origin("http://127.0.0.1:8000/v1/x").unwrap().host,
            "127.0.0.1:8000"
        );
        assert_eq!(origin("http://vllm.ns.svc/v1").unwrap().host, "vllm.ns.svc");
        assert_eq!(origin("http://[::1]:9/v1").unwrap().host, "[::1]:9");
        assert!(origin("https://api.openai.com/v1").is_none());
        assert!(origin("http://user:pw@h/v1").is_none());
    }
}

/// An HTTP/1.1 server on 127.0.0.1 for tests of the client: it answers each request with what
/// the test scripts (raw bytes, in pieces, with or without closing), and counts connections.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    /// What the server does with one request.
    pub struct Reply {
        /// Written one after the other, each flushed.
        pub pieces: Vec<Vec<u8>>,
        /// Waited before answering (an upstream's generation time).
        pub delay: Duration,
        /// Close the connection after answering (without saying so in the head).
        pub close: bool,
    }

    impl Reply {
        pub fn json(body: &str) -> Self {
            Self::raw(format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ))
        }

        pub fn raw(bytes: impl Into<Vec<u8>>) -> Self {
            Self {
                pieces: vec![bytes.into()],
                delay: Duration::ZERO,
                close: false,
            }
        }
    }

    pub struct Server {
        pub url: String,
        /// Connections accepted.
        pub connections: Arc<AtomicUsize>,
        /// One permit per reply fully written.
        pub answered: Arc<Semaphore>,
        /// One permit per connection the client closed while its request waited for an answer.
        pub abandoned: Arc<Semaphore>,
    }

    /// Starts the server; `reply` sees each request's body.
    pub async fn start(reply: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Semaphore::new(0));
        let abandoned = Arc::new(Semaphore::new(0));
        let reply = Arc::new(reply);
        let (c, a, ab) = (connections.clone(), answered.clone(), abandoned.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (reply, a, ab) = (reply.clone(), a.clone(), ab.clone());
                tokio::spawn(serve(stream, reply, a, ab));
            }
        });
        Server {
            url,
            connections,
            answered,
            abandoned,
        }
    }

    async fn serve(
        mut stream: TcpStream,
        reply: Arc<impl Fn(&[u8]) -> Reply>,
        answered: Arc<Semaphore>,
        abandoned: Arc<Semaphore>,
    ) {
        let mut buf = Vec::new();
        loop {
            let Some(body) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            let r = reply(&body);
            if !r.delay.is_zero() {
                // The client may give up while the "generation" runs: a read then sees the end.
                let mut probe = [0u8; 1];
                tokio::select! {
                    _ = tokio::time::sleep(r.delay) => {}
                    _ = stream.read(&mut probe) => { abandoned.add_permits(1); return }
                }
            }
            for piece in &r.pieces {
                if stream.write_all(piece).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
            answered.add_permits(1);
            if r.close {
                return;
            }
        }
    }

    /// Reads one request (head and `content-length` body); `None` at the end of the stream.
    async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= len + length {
                    let body = buf[len..len + length].to_vec();
                    buf.drain(..len + length);
                    return Some(body);
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[cfg(test)]
mod exchange_tests {
    use std::sync::atomic::Ordering;

    use super::test_server::{Reply, start};
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::for_url(&url::Url::parse(url).unwrap(), Duration::from_secs(5)).unwrap()
    }

    async fn post(o: &Origin) -> Result<H1Response, H1Error> {
        o.post(
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            b"{}",
        )
        .await
    }

    #[tokio::test]
    async fn one_connection_carries_sequential_calls() {
        let server = start(|_| Reply::json(r#"{"ok":true}"#)).await;
        let o = origin(&server.url);
        for _ in 0..3 {
            let r = post(&o).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (200, &br#"{"ok":true}"#[..]));
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_without_failing_the_call() {
        // The server closes after each answer without saying so, as one whose keep-alive
        // timeout passed does: the next call finds the pooled connection dead.
        let server = start(|_| Reply {
            close: true,
            ..Reply::json("{}")
        })
        .await;
        let o = origin(&server.url);
        for _ in 0..3 {
            assert_eq!(post(&o).await.unwrap().status, 200);
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn chunked_informational_and_close_delimited_answers_are_read_whole() {
        let server = start(|body| match body {
            b"chunked" => Reply {
                pieces: vec![
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhel".to_vec(),
                    b"lo\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec(),
                ],
                ..Reply::raw("")
            },
            _ => Reply {
                close: true,
                ..Reply::raw("HTTP/1.1 200 OK\r\n\r\nuntil the end")
            },
        })
        .await;
        let o = origin(&server.url);
        for _ in 0..2 {
            let r = o.post("/", &[], b"chunked").await.unwrap();
            assert_eq!(&r.body[..], b"hello world");
        }
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            1,
            "chunked keeps the connection"
        );
        let r = o.post("/", &[], b"close").await.unwrap();
        assert_eq!(&r.body[..], b"until the end");
    }

    #[tokio::test]
    async fn cut_oversized_and_garbage_answers_fail_with_their_reason() {
        let server = start(|body| match body {
            b"cut" => Reply {
                close: true,
                ..Reply::raw("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            },
            b"huge" => Reply::raw("HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n"),
            _ => Reply::raw("SSH-2.0-OpenSSH\r\n\r\n"),
        })
        .await;
        let o = origin(&server.url);
        let err = |body: &'static [u8]| {
            let o = &o;
            async move { o.post("/", &[], body).await.err().unwrap().to_string() }
        };
        assert!(err(b"cut").await.contains("in the middle of its answer"));
        assert!(err(b"huge").await.contains("larger than 67108864 bytes"));
        assert!(err(b"garbage").await.contains("not HTTP/1.1"));
    }

    #[tokio::test]
    async fn error_statuses_keep_their_headers_and_a_line_break_in_a_key_is_refused() {
        let server = start(|_| {
            Reply::raw(
                "HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 4\r\n\r\nslow",
            )
        })
        .await;
        let o = origin(&server.url);
        let r = post(&o).await.unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers.unwrap()["retry-after"], "2");
        assert_eq!(&r.body[..], b"slow");
        let e = o
            .post(
                "/",
                &[("authorization", "Bearer sk\r\nx-injected: 1")],
                b"{}",
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(e, H1Error::Request(_)), "{e}");
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            1,
            "nothing was sent for it"
        );
    }
}
