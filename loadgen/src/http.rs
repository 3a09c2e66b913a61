//! The HTTP side: the target, the request every worker sends, and one keep-alive HTTP/1.1
//! connection (hyper's client over a tokio `TcpStream`).

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::template::Template;
use crate::{limits, Error};

/// Where requests go: `http://HOST[:PORT]`, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: SocketAddr,
    /// `HOST[:PORT]` as given, for the `Host` header.
    pub authority: String,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, Error> {
        let usage = "expected --target http://HOST:PORT";
        let uri: Uri = text.parse().map_err(|error| Error::config(format!("--target {text:?}: {error}; {usage}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(Error::config(format!("--target {text:?}: {usage}")));
        }
        let authority = uri.authority().ok_or_else(|| Error::config(format!("--target {text:?}: {usage}")))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(Error::config(format!("--target {text:?}: give the path with --path; {usage}")));
        }
        let port = authority.port_u16().unwrap_or(80);
        let address = (authority.host().trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|error| Error::config(format!("--target {text:?}: {error}")))?
            .next()
            .ok_or_else(|| Error::config(format!("--target {text:?}: the host has no address")))?;
        Ok(Target { address, authority: authority.as_str().to_string() })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// The request a run sends, with its key still to fill in.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    method: Method,
    path: Template,
    body: Template,
    /// The body, rendered once when it does not depend on the key.
    body_constant: Option<Bytes>,
    /// `Host` and the headers given, validated.
    headers: HeaderMap,
}

impl RequestSpec {
    /// Checks the method, the headers (`Name: value`) and that the path renders to a valid
    /// origin-form target (`/...`); keys only add `k` and digits, so one key checks them all.
    pub fn new(
        target: &Target,
        method: &str,
        path: &str,
        body: &str,
        headers: &[String],
    ) -> Result<RequestSpec, Error> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|error| Error::config(format!("--method {method:?}: {error}")))?;
        let path = Template::parse(path);
        let sample = path.render(0);
        if !sample.starts_with('/') || sample.parse::<Uri>().is_err() {
            return Err(Error::config(format!("--path {sample:?}: expected an absolute path such as /v1/call/...")));
        }
        let mut map = HeaderMap::new();
        let host = HeaderValue::from_str(&target.authority)
            .map_err(|error| Error::config(format!("--target host {:?}: {error}", target.authority)))?;
        map.insert(HOST, host);
        for header in headers {
            let (name, value) = parse_header(header)?;
            // A `Host` given replaces the target's; other names may repeat.
            if name == HOST {
                map.insert(name, value);
            } else {
                map.append(name, value);
            }
        }
        let body = Template::parse(body);
        let body_constant = body.is_constant().then(|| Bytes::from(body.render(0)));
        Ok(RequestSpec { method, path, body, body_constant, headers: map })
    }

    /// The request for key number `key`.
    pub fn build(&self, key: u64) -> Result<Request<Full<Bytes>>, Failure> {
        let body = match &self.body_constant {
            Some(body) => body.clone(),
            None => Bytes::from(self.body.render(key)),
        };
        let uri = Uri::try_from(self.path.render(key)).map_err(|error| Failure::Request(error.to_string()))?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

fn parse_header(header: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let bad = |reason: String| Error::config(format!("--header {header:?}: {reason}; expected 'Name: value'"));
    let (name, value) = header.split_once(':').ok_or_else(|| bad("no colon".into()))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|error| bad(error.to_string()))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|error| bad(error.to_string()))?;
    Ok((name, value))
}

/// Why one request failed. The run counts these; the first one is shown in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be opened.
    Connect(String),
    /// The connection broke while sending or receiving.
    Broken(String),
    /// A response that is not 2xx, with the start of its body.
    Status { status: StatusCode, body: String },
    /// No full response within the request timeout or before the drain ended.
    Timeout,
    /// The key made an invalid request (cannot happen with `k{n}` keys, checked anyway).
    Request(String),
}

impl Failure {
    /// Whether the connection is unusable after this failure and must be replaced.
    pub fn breaks_connection(&self) -> bool {
        matches!(self, Failure::Broken(_) | Failure::Timeout)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(reason) => write!(f, "connecting: {reason}"),
            Failure::Broken(reason) => write!(f, "connection lost: {reason}"),
            Failure::Status { status, body } => write!(f, "{status}: {body}"),
            Failure::Timeout => write!(f, "no response in time"),
            Failure::Request(reason) => write!(f, "bad request: {reason}"),
        }
    }
}

/// One keep-alive HTTP/1.1 connection: requests go one at a time.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// The task that drives hyper's side of the connection; aborted with the connection.
    driver: JoinHandle<()>,
}

impl Connection {
    /// Connects to `address` and starts the connection's driver on the current `LocalSet`.
    pub async fn open(address: SocketAddr) -> Result<Connection, Failure> {
        let stream = TcpStream::connect(address).await.map_err(|error| Failure::Connect(error.to_string()))?;
        stream.set_nodelay(true).map_err(|error| Failure::Connect(error.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioStream::new(stream))
            .await
            .map_err(|error| Failure::Connect(error.to_string()))?;
        let driver = tokio::task::spawn_local(async move {
            // Its errors also reach the sender, which reports them with the request.
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    /// Whether the connection can take a request; `false` when the server closed it.
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    /// Sends `request` and reads the whole response: `Ok` for a 2xx status.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<(), Failure> {
        let broken = |error: hyper::Error| Failure::Broken(error.to_string());
        self.sender.ready().await.map_err(broken)?;
        let response = self.sender.send_request(request).await.map_err(broken)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limits::response_body_bytes_max)
            .collect()
            .await
            .map_err(|error| Failure::Broken(format!("reading the response body: {error}")))?
            .to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Status { status, body: snippet(&body) })
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The start of a response body, as text, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(limits::error_sample_bytes_max)]);
    text.trim().to_string()
}

/// A tokio `TcpStream` as hyper's I/O. Bytes are read into a chunk, then copied into hyper's
/// buffer: that keeps the crate free of `unsafe`, and the copy is cheap next to the system call.
#[derive(Debug)]
pub struct TokioStream {
    stream: TcpStream,
    chunk: Box<[u8]>,
}

impl TokioStream {
    pub fn new(stream: TcpStream) -> TokioStream {
        TokioStream { stream, chunk: vec![0; limits::read_chunk_bytes_max].into_boxed_slice() }
    }
}

impl hyper::rt::Read for TokioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = buf.remaining().min(this.chunk.len());
        let mut chunk = ReadBuf::new(&mut this.chunk[..want]);
        match Pin::new(&mut this.stream).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(chunk.filled());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for TokioStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Targets, requests and failures built and inspected, without a network.

    use super::*;

    fn target() -> Target {
        Target::parse("http://127.0.0.1:8070").unwrap()
    }

    #[test]
    fn targets_parse_and_quic_is_refused_clearly() {
        let target = target();
        assert_eq!(target.address, "127.0.0.1:8070".parse::<SocketAddr>().unwrap());
        assert_eq!(target.authority, "127.0.0.1:8070");
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().address.port(), 80);
        assert_eq!(Target::parse("http://[::1]:9/").unwrap().address, "[::1]:9".parse::<SocketAddr>().unwrap());

        assert!(Target::parse("quic://127.0.0.1:8070").is_err(), "not an HTTP target");
        for bad in ["127.0.0.1:8070", "https://127.0.0.1:8070", "http://127.0.0.1:8070/v1", "http://", ""] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_carry_the_key_method_headers_and_host() {
        let headers =
            ["Content-Type: application/vnd.example/delta".to_string(), "X-Twice: a".into(), "x-twice:b".into()];
        let spec = RequestSpec::new(&target(), "PUT", "/v1/call/example/counter/{key}", "{key}=1", &headers).unwrap();
        let request = spec.build(12).unwrap();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "/v1/call/example/counter/k12");
        assert_eq!(request.headers()[HOST], "127.0.0.1:8070");
        assert_eq!(request.headers()["content-type"], "application/vnd.example/delta");
        let twice: Vec<_> = request.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["a", "b"]);
        let body = request.into_body();
        let body = body_text(body);
        assert_eq!(body, "k12=1");

        let host = RequestSpec::new(&target(), "POST", "/", "", &["Host: example.org".into()]).unwrap();
        let request = host.build(0).unwrap();
        assert_eq!(request.headers().get_all(HOST).iter().count(), 1);
        assert_eq!(request.headers()[HOST], "example.org");
    }

    #[test]
    fn bad_methods_paths_and_headers_are_refused() {
        let target = target();
        assert!(RequestSpec::new(&target, "GE T", "/", "", &[]).is_err());
        for path in ["v1/call", "", "/a b/{key}"] {
            assert!(RequestSpec::new(&target, "POST", path, "", &[]).is_err(), "{path:?}");
        }
        for header in ["Content-Type", "Bad Name: x", ": x", "X: line\nbreak"] {
            assert!(RequestSpec::new(&target, "POST", "/", "", &[header.into()]).is_err(), "{header:?}");
        }
    }

    #[test]
    fn failures_say_whether_the_connection_survives() {
        let status = Failure::Status { status: StatusCode::NOT_FOUND, body: "no such function".into() };
        assert!(!status.breaks_connection());
        assert_eq!(status.to_string(), "404 Not Found: no such function");
        assert!(Failure::Timeout.breaks_connection());
        assert!(Failure::Broken("reset".into()).breaks_connection());
        assert_eq!(snippet(&[b'x'; 1000]).len(), limits::error_sample_bytes_max);
    }

    fn body_text(body: Full<Bytes>) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = runtime.block_on(body.collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
