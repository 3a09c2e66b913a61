//! The HTTP/1.1 client that carries requests to remote functions.
//!
//! StateFun's request-reply protocol is one `POST` of a protobuf body per invocation batch,
//! answered by a `2xx` with `Content-Type: application/octet-stream`. A [`Pool`] holds the
//! keep-alive connections of one shard to one endpoint: it lives on that shard's executor
//! (nothing in it is `Send`), opens at most `pool_size` connections, and makes requests wait
//! for a free one beyond that. This module only carries bytes: what a status means and when
//! to retry is the dispatcher's business; [`Response::retry_after`] is there to help it.
//!
//! Each connection is driven by its own local task, whose handle the connection keeps:
//! dropping a connection (an attempt timed out, a body was too large, the pool went away)
//! cancels the task and closes the socket, so an abandoned exchange never lingers.

#![allow(dead_code)] // wired into the node by the remote dispatcher

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::rt::{self, HyperStream, Semaphore, TcpStream};

/// The content type of StateFun's request-reply protocol, both ways.
const OCTET_STREAM: &str = "application/octet-stream";

/// Sent with every request, so that a function's logs tell who called.
const USER_AGENT: &str = concat!("statefun/", env!("CARGO_PKG_VERSION"));

/// Addresses of one name tried per connection attempt: a name with more is an unusual
/// deployment, and the attempt's timeout runs out long before a long list would.
#[allow(non_upper_case_globals)] // a limit, named as those in `crate::limits`
const resolved_addresses_tried_max: usize = 4;

/// Where and how to reach one endpoint. One [`Pool`] is made from it per (shard, endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `https` rather than `http`.
    pub tls: bool,
    /// A name, or an IP literal (IPv6 with or without brackets).
    pub host: String,
    /// The TCP port; the `Host` header leaves it out when it is the scheme's default.
    pub port: u16,
    /// Bounds the TCP connect and the TLS handshake of one new connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed rather than reused.
    pub pool_ttl: Duration,
    /// Open connections at most (at least 1); requests beyond wait for a free one.
    pub pool_size: u32,
    /// The largest response body accepted (StateFun's `payload_max_bytes`).
    pub response_bytes_max: u64,
    /// PEM file of the CAs that sign the endpoint's certificate; without it, the Mozilla
    /// roots of `webpki-roots`. Read only when `tls` is set, as are the two below.
    pub trust_cacerts: Option<PathBuf>,
    /// PEM certificate chain shown to the endpoint (mutual TLS), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8; PKCS#1 and SEC1 are accepted too).
    pub client_key: Option<PathBuf>,
}

/// What an endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code, whatever it is: `2xx` is not checked here.
    pub status: u16,
    /// `Content-Type`, if present and printable.
    pub content_type: Option<String>,
    /// `Retry-After`, from delta-seconds or from an HTTP date taken relative to now (zero
    /// for a date in the past); `None` if absent or unreadable.
    pub retry_after: Option<Duration>,
    /// The whole body, at most `response_bytes_max` bytes.
    pub body: Bytes,
}

/// What went wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint's configuration cannot work.
    #[error("endpoint {endpoint}: {why}")]
    Config { endpoint: String, why: String },
    /// A TLS file could not be read or holds nothing usable.
    #[error("tls: cannot read {what} {}: {why}", path.display())]
    TlsFile { what: &'static str, path: PathBuf, why: String },
    /// The TLS files were read but rustls refused them.
    #[error("tls: {why}")]
    TlsConfig { why: String },
    /// The request path is not an origin-form path.
    #[error("invalid request path {path:?}: {why}")]
    Path { path: String, why: String },
    /// The host name did not resolve.
    #[error("resolve {endpoint}: {why}")]
    Resolve { endpoint: String, why: String },
    /// The TCP connect failed.
    #[error("connect to {at}: {source}")]
    Connect { at: String, source: io::Error },
    /// The TCP connect and TLS handshake took longer than `connect_timeout`.
    #[error("connect to {at}: timed out after {after:?}")]
    ConnectTimeout { at: String, after: Duration },
    /// The TLS handshake failed.
    #[error("tls handshake with {at}: {source}")]
    Handshake { at: String, source: io::Error },
    /// The attempt (pool wait, connect, request and whole response) took longer than its
    /// timeout.
    #[error("timed out after {after:?} waiting for {endpoint}")]
    Timeout { endpoint: String, after: Duration },
    /// The exchange failed after the connection was made: reset, closed early, bad HTTP.
    #[error("http exchange with {endpoint}: {why}")]
    Http { endpoint: String, why: String },
    /// The response announced a body larger than allowed.
    #[error("response of {bytes} bytes exceeds payload_max_bytes {max}")]
    ResponseTooLarge { bytes: u64, max: u64 },
    /// A response without a length grew past the limit.
    #[error("response exceeds payload_max_bytes {max}")]
    ResponseOverLimit { max: u64 },
}

/// The TLS side of a pool: the connector and the name checked on the certificate (SNI).
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// A connection to the endpoint, idle or in use.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// The task that drives the socket. Dropping it cancels the task and closes the socket.
    _driver: rt::Task<()>,
    idle_since: Instant,
}

/// The keep-alive connections of one shard to one endpoint. Not `Send`: it lives on one
/// glommio executor, and its futures borrow it.
pub struct Pool {
    /// `host:port`, for messages.
    endpoint: String,
    /// The host to resolve, without brackets.
    host: String,
    /// Set when the host is an IP literal: nothing to resolve.
    ip: Option<IpAddr>,
    port: u16,
    /// The `Host` header: the authority without a default port.
    authority: HeaderValue,
    tls: Option<Tls>,
    connect_timeout: Duration,
    pool_ttl: Duration,
    response_bytes_max: u64,
    /// Idle connections, the most recently used last. Never borrowed across an await.
    idle: RefCell<VecDeque<Connection>>,
    /// One permit per attempt in flight, `pool_size` in all. An attempt opens a connection
    /// only when none is idle, so open connections never outnumber the permits.
    permits: Semaphore,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("idle", &self.idle.borrow().len())
            .field("permits_available", &self.permits.available())
            .finish()
    }
}

impl Pool {
    /// Checks `config` and reads its TLS files now: a bad file is a start-up error that names
    /// the file, not a failure of every later request.
    pub fn new(config: PoolConfig) -> Result<Pool, Error> {
        let host = config.host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let ip = host.parse::<IpAddr>().ok();
        let bracketed = match ip {
            Some(IpAddr::V6(_)) => format!("[{host}]"),
            _ => host.clone(),
        };
        let endpoint = format!("{bracketed}:{}", config.port);
        let config_error = |why: String| Error::Config { endpoint: endpoint.clone(), why };
        if host.is_empty() {
            return Err(config_error("the host is empty".into()));
        }
        if config.pool_size == 0 {
            return Err(config_error("pool_size must be at least 1".into()));
        }
        if config.connect_timeout.is_zero() {
            return Err(config_error("connect_timeout must be above zero".into()));
        }
        let default_port = if config.tls { 443 } else { 80 };
        let authority = match config.port == default_port {
            true => bracketed.clone(),
            false => endpoint.clone(),
        };
        let authority = HeaderValue::from_str(&authority)
            .map_err(|error| config_error(format!("the host is not a valid authority: {error}")))?;
        let tls = match config.tls {
            true => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|error| config_error(format!("the host is not a valid TLS server name: {error}")))?;
                Some(Tls { connector: TlsConnector::from(tls_config(&config)?), name })
            }
            false => None,
        };
        Ok(Pool {
            endpoint,
            host,
            ip,
            port: config.port,
            authority,
            tls,
            connect_timeout: config.connect_timeout,
            pool_ttl: config.pool_ttl,
            response_bytes_max: config.response_bytes_max,
            idle: RefCell::new(VecDeque::new()),
            permits: Semaphore::new(u64::from(config.pool_size)),
        })
    }

    /// POSTs `body` to `path` with `Content-Type` and `Accept` `application/octet-stream`,
    /// `Content-Length`, `Host` (the authority without a default port) and `User-Agent`
    /// `statefun/{version}`, on a kept-alive connection. `timeout` bounds this one attempt:
    /// the wait for a free connection, the connect, the request and the whole response.
    ///
    /// Any status is a [`Response`]; only a failure to exchange is an [`Error`]. A request
    /// that a reused connection could not carry before it closed (so no byte of it left) is
    /// sent again on another connection; any other failure is the caller's to retry.
    pub async fn post(&self, path: &str, body: Bytes, timeout: Duration) -> Result<Response, Error> {
        let request = self.request(path, body)?;
        match rt::timeout(timeout, self.attempt(request)).await {
            Some(outcome) => outcome,
            None => Err(Error::Timeout { endpoint: self.endpoint.clone(), after: timeout }),
        }
    }

    fn request(&self, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>, Error> {
        let path_error = |why: String| Error::Path { path: path.to_owned(), why };
        if !path.starts_with('/') {
            return Err(path_error("it must start with '/'".into()));
        }
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, self.authority.clone())
            .header(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM))
            .header(header::ACCEPT, HeaderValue::from_static(OCTET_STREAM))
            .header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))
            .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
            .body(Full::new(body))
            .map_err(|error| path_error(error.to_string()))
    }

    async fn attempt(&self, mut request: Request<Full<Bytes>>) -> Result<Response, Error> {
        let _permit = self.permits.acquire_permit(1).await.map_err(|error| Error::Http {
            endpoint: self.endpoint.clone(),
            why: format!("the connection pool is closed: {error}"),
        })?;
        loop {
            let (mut connection, fresh) = match self.take_idle().await {
                Some(connection) => (connection, false),
                None => (self.connect().await?, true),
            };
            let response = match connection.sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut error) => match error.take_message() {
                    // The connection closed before the request was written: it may go on
                    // another. Each retry uses up an idle connection or opens a fresh one,
                    // which is not retried, so this ends.
                    Some(message) if !fresh => {
                        request = message;
                        continue;
                    }
                    _ => return Err(self.http_error(&error.into_error())),
                },
            };
            // On an error the connection is dropped here, mid-response: closed, not reused.
            let response = self.read(response).await?;
            self.put_idle(connection);
            return Ok(response);
        }
    }

    /// The most recently used idle connection that is still open and ready, if any.
    async fn take_idle(&self) -> Option<Connection> {
        self.prune();
        loop {
            let mut connection = self.idle.borrow_mut().pop_back()?;
            if connection.sender.is_closed() {
                continue;
            }
            // Ready once the connection has finished with the previous exchange; an error
            // if it has closed meanwhile (the server's own idle timeout, `Connection: close`).
            if connection.sender.ready().await.is_ok() {
                return Some(connection);
            }
        }
    }

    fn put_idle(&self, mut connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        connection.idle_since = Instant::now();
        self.idle.borrow_mut().push_back(connection);
        self.prune();
    }

    /// Closes the idle connections older than `pool_ttl` or closed by the server. Expiry is
    /// checked when the pool is used; an unused pool keeps at most `pool_size` sockets, and
    /// their driving tasks end as soon as the server closes its side.
    fn prune(&self) {
        let now = Instant::now();
        let ttl = self.pool_ttl;
        self.idle.borrow_mut().retain(|connection| {
            !connection.sender.is_closed() && now.saturating_duration_since(connection.idle_since) < ttl
        });
    }

    async fn connect(&self) -> Result<Connection, Error> {
        let addresses = self.resolve().await?;
        let mut failure = None;
        for address in addresses.into_iter().take(resolved_addresses_tried_max) {
            match rt::timeout(self.connect_timeout, self.open(address)).await {
                Some(Ok(connection)) => return Ok(connection),
                Some(Err(error)) => failure = Some(error),
                None => failure = Some(Error::ConnectTimeout { at: self.at(address), after: self.connect_timeout }),
            }
        }
        Err(failure
            .unwrap_or_else(|| Error::Resolve { endpoint: self.endpoint.clone(), why: "no address found".into() }))
    }

    /// The addresses of the host, resolved anew for each connection attempt so that a moved
    /// endpoint is found again.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        if let Some(ip) = self.ip {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        // std's resolver blocks, for as long as a slow DNS server takes: it runs on the
        // executor's blocking thread, not on the executor, so the shard keeps serving. The
        // price is that this thread is shared with glommio's other blocking work (some file
        // operations), which waits behind a slow lookup; and there is no cache here beyond
        // the system's (nscd, systemd-resolved). Connections are pooled, so lookups are rare.
        let (host, port) = (self.host.clone(), self.port);
        let resolved = rt::spawn_blocking(move || {
            (host.as_str(), port).to_socket_addrs().map(|addresses| addresses.collect::<Vec<_>>())
        })
        .await;
        resolved.map_err(|error| Error::Resolve { endpoint: self.endpoint.clone(), why: error.to_string() })
    }

    /// Connects to one address, with TLS if configured, and starts the task that drives it.
    async fn open(&self, address: SocketAddr) -> Result<Connection, Error> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| Error::Connect { at: self.at(address), source: io::Error::from(error) })?;
        // Requests are written whole: no reason to wait for more (Nagle).
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.start(stream).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(|source| Error::Handshake { at: self.at(address), source })?;
                self.start(stream).await
            }
        }
    }

    async fn start<S>(&self, stream: S) -> Result<Connection, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        // No hyper timers: they must be `Send`, glommio's are not. The attempt's timeout is
        // applied around the exchange instead.
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Full<Bytes>>(HyperStream::new(stream))
            .await
            .map_err(|error| self.http_error(&error))?;
        let endpoint = self.endpoint.clone();
        let driver = rt::spawn_local(async move {
            if let Err(error) = connection.await {
                tracing::debug!("http connection to {endpoint} ended: {}", chain(&error));
            }
        });
        Ok(Connection { sender, _driver: driver, idle_since: Instant::now() })
    }

    async fn read(&self, response: http::Response<Incoming>) -> Result<Response, Error> {
        let max = self.response_bytes_max;
        let (parts, body) = response.into_parts();
        if let Some(bytes) = body.size_hint().exact().filter(|bytes| *bytes > max) {
            return Err(Error::ResponseTooLarge { bytes, max });
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let collected = Limited::new(body, limit).collect().await.map_err(|error| {
            match error.downcast_ref::<LengthLimitError>() {
                Some(_) => Error::ResponseOverLimit { max },
                None => Error::Http { endpoint: self.endpoint.clone(), why: chain(&*error) },
            }
        })?;
        let headers = &parts.headers;
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, SystemTime::now()));
        Ok(Response { status: parts.status.as_u16(), content_type, retry_after, body: collected.to_bytes() })
    }

    /// The endpoint, and the address when it says more.
    fn at(&self, address: SocketAddr) -> String {
        let address = address.to_string();
        match address == self.endpoint {
            true => address,
            false => format!("{} ({address})", self.endpoint),
        }
    }

    fn http_error(&self, error: &hyper::Error) -> Error {
        Error::Http { endpoint: self.endpoint.clone(), why: chain(error) }
    }
}

/// An error and its causes, `: `-separated: hyper's own `Display` leaves the cause out.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as delta-seconds or as an HTTP date, relative to `now`.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The rustls client configuration of an endpoint, with the ring provider.
fn tls_config(config: &PoolConfig) -> Result<Arc<rustls::ClientConfig>, Error> {
    let rustls_error = |error: rustls::Error| Error::TlsConfig { why: error.to_string() };
    let mut roots = rustls::RootCertStore::empty();
    match &config.trust_cacerts {
        Some(path) => {
            for certificate in certificates(path, "trust_cacerts")? {
                roots.add(certificate).map_err(|error| Error::TlsFile {
                    what: "trust_cacerts",
                    path: path.clone(),
                    why: error.to_string(),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_root_certificates(roots);
    let mut client = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "client_cert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|error| Error::TlsFile {
                what: "client_key",
                path: key.clone(),
                why: error.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(rustls_error)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::TlsConfig { why: "client_cert and client_key go together: set both or neither".into() })
        }
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let file_error = |why: String| Error::TlsFile { what, path: path.to_owned(), why };
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(error.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|error| file_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(file_error("no CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// The client against real HTTP/1.1 servers on loopback (a small hand-written one on std
/// threads, in plain TCP and in TLS through rustls), each test on its own executor.
#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// Connections a test server accepts before its accept loop ends.
    const SERVER_ACCEPTS_MAX: usize = 16;

    /// A request as the test server saw it: its head (header names lower-cased) and body.
    #[derive(Debug, Clone, Default)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
        }
    }

    /// What the test server does with a request.
    enum Action {
        /// Writes these bytes, after waiting this long.
        Reply(Duration, Vec<u8>),
        /// Answers nothing, and closes the connection after this long.
        Silent(Duration),
    }

    fn reply(status: &str, headers: &[&str], body: &[u8]) -> Action {
        let mut text = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        Action::Reply(Duration::ZERO, bytes)
    }

    fn ok(body: &[u8]) -> Action {
        reply("200 OK", &["content-type: application/octet-stream"], body)
    }

    type Handler = Arc<dyn Fn(&Seen) -> Action + Send + Sync>;

    struct Server {
        address: SocketAddr,
        accepts: Arc<AtomicUsize>,
        /// Connections open at once, at most.
        open_max: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        fn start(
            tls: Option<Arc<rustls::ServerConfig>>,
            handler: impl Fn(&Seen) -> Action + Send + Sync + 'static,
        ) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let accepts = Arc::new(AtomicUsize::new(0));
            let open = Arc::new(AtomicUsize::new(0));
            let open_max = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let handler: Handler = Arc::new(handler);
            let server = Server { address, accepts: accepts.clone(), open_max: open_max.clone(), seen: seen.clone() };
            std::thread::spawn(move || {
                for stream in listener.incoming().take(SERVER_ACCEPTS_MAX) {
                    let Ok(stream) = stream else { continue };
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                    open_max.fetch_max(now_open, Ordering::SeqCst);
                    let (open, seen, handler, tls) = (open.clone(), seen.clone(), handler.clone(), tls.clone());
                    std::thread::spawn(move || {
                        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        match tls {
                            None => serve_connection(stream, &seen, &handler),
                            Some(config) => {
                                let connection = rustls::ServerConnection::new(config).unwrap();
                                serve_connection(rustls::StreamOwned::new(connection, stream), &seen, &handler)
                            }
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            });
            server
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn serve_connection<S: Read + Write>(stream: S, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
        let mut reader = BufReader::new(stream);
        while let Some(request) = read_request(&mut reader) {
            seen.lock().unwrap().push(request.clone());
            match handler(&request) {
                Action::Reply(delay, bytes) => {
                    std::thread::sleep(delay);
                    let stream = reader.get_mut();
                    if stream.write_all(&bytes).and_then(|()| stream.flush()).is_err() {
                        return;
                    }
                }
                Action::Silent(hold) => return std::thread::sleep(hold),
            }
        }
    }

    fn read_request<S: Read>(reader: &mut BufReader<S>) -> Option<Seen> {
        let mut request = Seen::default();
        reader.read_line(&mut request.line).ok().filter(|read| *read > 0)?;
        request.line = request.line.trim_end().to_owned();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok().filter(|read| *read > 0)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':')?;
            request.headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length: usize = request.header("content-length").map_or(Some(0), |length| length.parse().ok())?;
        request.body = vec![0; length];
        reader.read_exact(&mut request.body).ok()?;
        Some(request)
    }

    fn config(address: SocketAddr) -> PoolConfig {
        PoolConfig {
            tls: false,
            host: address.ip().to_string(),
            port: address.port(),
            connect_timeout: Duration::from_secs(2),
            pool_ttl: Duration::from_secs(60),
            pool_size: 4,
            response_bytes_max: 1024,
            trust_cacerts: None,
            client_cert: None,
            client_key: None,
        }
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        rt::block_on(future)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn posts_the_body_with_the_protocol_headers() {
        let server = Server::start(None, |request| ok(&request.body.iter().rev().copied().collect::<Vec<_>>()));
        let response = run(async {
            let pool = Pool::new(config(server.address)).unwrap();
            pool.post("/statefun", Bytes::from_static(b"abc"), SECOND).await.unwrap()
        });
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(response.retry_after, None);
        assert_eq!(&response.body[..], b"cba");
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let request = &seen[0];
        assert_eq!(request.line, "POST /statefun HTTP/1.1");
        assert_eq!(request.header("content-type"), Some("application/octet-stream"));
        assert_eq!(request.header("accept"), Some("application/octet-stream"));
        assert_eq!(request.header("content-length"), Some("3"));
        assert_eq!(request.header("host"), Some(format!("127.0.0.1:{}", server.address.port()).as_str()));
        assert!(request.header("user-agent").unwrap().starts_with("statefun/"));
        assert!(request.header("connection").is_none_or(|value| !value.eq_ignore_ascii_case("close")));
        assert_eq!(request.body, b"abc");
    }

    #[test]
    fn host_header_leaves_out_the_default_port() {
        let base = config("127.0.0.1:80".parse().unwrap());
        let pool = Pool::new(base.clone()).unwrap();
        assert_eq!(pool.authority, "127.0.0.1");
        let pool = Pool::new(PoolConfig { host: "::1".into(), port: 8080, ..base.clone() }).unwrap();
        assert_eq!(pool.authority, "[::1]:8080");
        assert_eq!(pool.endpoint, "[::1]:8080");
        let pool = Pool::new(PoolConfig { host: "[::1]".into(), port: 80, ..base }).unwrap();
        assert_eq!(pool.authority, "[::1]");
    }

    #[test]
    fn keeps_a_connection_alive_across_requests() {
        let server = Server::start(None, |_| ok(b"ok"));
        run(async {
            let pool = Pool::new(config(server.address)).unwrap();
            for _ in 0..3 {
                let response = pool.post("/f", Bytes::from_static(b"x"), SECOND).await.unwrap();
                assert_eq!(&response.body[..], b"ok");
            }
        });
        assert_eq!(server.accepts.load(Ordering::SeqCst), 1);
        assert_eq!(server.seen().len(), 3);
    }

    #[test]
    fn closes_idle_connections_older_than_the_ttl() {
        let server = Server::start(None, |_| ok(b"ok"));
        run(async {
            let pool = Pool::new(PoolConfig { pool_ttl: Duration::from_millis(50), ..config(server.address) }).unwrap();
            pool.post("/f", Bytes::new(), SECOND).await.unwrap();
            rt::sleep(Duration::from_millis(100)).await;
            pool.post("/f", Bytes::new(), SECOND).await.unwrap();
        });
        assert_eq!(server.accepts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn reconnects_after_the_server_closes() {
        let server = Server::start(None, |_| reply("200 OK", &["connection: close"], b"bye"));
        run(async {
            let pool = Pool::new(config(server.address)).unwrap();
            for _ in 0..2 {
                let response = pool.post("/f", Bytes::new(), SECOND).await.unwrap();
                assert_eq!(&response.body[..], b"bye");
            }
        });
        assert_eq!(server.accepts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn reads_retry_after_of_a_500() {
        let server = Server::start(None, |_| reply("500 Internal Server Error", &["retry-after: 3"], b"busy"));
        let response = run(async {
            let pool = Pool::new(config(server.address)).unwrap();
            pool.post("/f", Bytes::new(), SECOND).await.unwrap()
        });
        assert_eq!(response.status, 500);
        assert_eq!(response.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(&response.body[..], b"busy");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21T07:28:00Z
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("-1", now), None);
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn a_response_over_the_limit_is_an_error() {
        let server = Server::start(None, |request| match request.line.contains("chunked") {
            true => {
                let chunk = vec![b'x'; 600];
                let mut bytes = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..2 {
                    bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    bytes.extend_from_slice(&chunk);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
                Action::Reply(Duration::ZERO, bytes)
            }
            false => ok(&[b'x'; 1025]),
        });
        run(async {
            let pool = Pool::new(config(server.address)).unwrap();
            let error = pool.post("/sized", Bytes::new(), SECOND).await.unwrap_err();
            assert!(matches!(error, Error::ResponseTooLarge { bytes: 1025, max: 1024 }), "{error}");
            assert_eq!(error.to_string(), "response of 1025 bytes exceeds payload_max_bytes 1024");
            let error = pool.post("/chunked", Bytes::new(), SECOND).await.unwrap_err();
            assert!(matches!(error, Error::ResponseOverLimit { max: 1024 }), "{error}");
            // Exactly at the limit is fine.
            let pool = Pool::new(PoolConfig { response_bytes_max: 1025, ..config(server.address) }).unwrap();
            assert_eq!(pool.post("/sized", Bytes::new(), SECOND).await.unwrap().body.len(), 1025);
        });
    }

    #[test]
    fn a_refused_connection_is_a_clear_error() {
        let address = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = run(async {
            let pool = Pool::new(config(address)).unwrap();
            pool.post("/f", Bytes::new(), SECOND).await.unwrap_err()
        });
        assert!(matches!(error, Error::Connect { .. }), "{error}");
        let text = error.to_string();
        assert!(text.starts_with(&format!("connect to {address}: ")), "{text}");
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
    }

    #[test]
    fn a_silent_server_times_out_within_the_attempt() {
        let server = Server::start(None, |_| Action::Silent(Duration::from_secs(3)));
        let started = Instant::now();
        let error = run(async {
            let pool = Pool::new(config(server.address)).unwrap();
            pool.post("/f", Bytes::new(), Duration::from_millis(200)).await.unwrap_err()
        });
        let took = started.elapsed();
        assert!(matches!(error, Error::Timeout { .. }), "{error}");
        assert_eq!(error.to_string(), format!("timed out after 200ms waiting for {}", server.address));
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_timed_out_connection_is_not_reused() {
        let server = Server::start(None, |request| match request.line.contains("slow") {
            true => Action::Silent(Duration::from_secs(3)),
            false => ok(b"ok"),
        });
        run(async {
            let pool = Pool::new(PoolConfig { pool_size: 1, ..config(server.address) }).unwrap();
            pool.post("/slow", Bytes::new(), Duration::from_millis(100)).await.unwrap_err();
            let response = pool.post("/f", Bytes::new(), SECOND).await.unwrap();
            assert_eq!(&response.body[..], b"ok");
        });
        assert_eq!(server.accepts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn pool_size_one_serialises_concurrent_requests() {
        let server = Server::start(None, |_| match ok(b"ok") {
            Action::Reply(_, bytes) => Action::Reply(Duration::from_millis(150), bytes),
            silent => silent,
        });
        let started = Instant::now();
        run(async {
            let pool = Rc::new(Pool::new(PoolConfig { pool_size: 1, ..config(server.address) }).unwrap());
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let pool = pool.clone();
                    rt::spawn_local(async move { pool.post("/f", Bytes::new(), SECOND).await })
                })
                .collect();
            for task in tasks {
                assert_eq!(&task.await.unwrap().body[..], b"ok");
            }
        });
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        assert_eq!(server.accepts.load(Ordering::SeqCst), 1);
        assert_eq!(server.open_max.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_pool_wait_counts_against_the_attempt_timeout() {
        let server = Server::start(None, |_| match ok(b"ok") {
            Action::Reply(_, bytes) => Action::Reply(Duration::from_millis(400), bytes),
            silent => silent,
        });
        run(async {
            let pool = Rc::new(Pool::new(PoolConfig { pool_size: 1, ..config(server.address) }).unwrap());
            let first = {
                let pool = pool.clone();
                rt::spawn_local(async move { pool.post("/f", Bytes::new(), SECOND).await })
            };
            rt::sleep(Duration::from_millis(50)).await;
            let error = pool.post("/f", Bytes::new(), Duration::from_millis(100)).await.unwrap_err();
            assert!(matches!(error, Error::Timeout { .. }), "{error}");
            assert!(first.await.is_ok());
            // The abandoned wait left the pool whole.
            assert!(pool.post("/f", Bytes::new(), SECOND).await.is_ok());
        });
        assert_eq!(server.seen().len(), 2);
        assert_eq!(server.accepts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bad_configurations_are_refused_at_start() {
        let base = config("127.0.0.1:9000".parse().unwrap());
        let error = Pool::new(PoolConfig { pool_size: 0, ..base.clone() }).unwrap_err();
        assert_eq!(error.to_string(), "endpoint 127.0.0.1:9000: pool_size must be at least 1");
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let error = Pool::new(PoolConfig { tls: true, trust_cacerts: Some(missing), ..base.clone() }).unwrap_err();
        assert!(error.to_string().starts_with("tls: cannot read trust_cacerts /nonexistent/ca.pem: "), "{error}");
        let files = TestFiles::new("bad-config");
        let empty = files.write("empty.pem", "");
        let error =
            Pool::new(PoolConfig { tls: true, trust_cacerts: Some(empty.clone()), ..base.clone() }).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("tls: cannot read trust_cacerts {}: no CERTIFICATE block", empty.display())
        );
        let error = Pool::new(PoolConfig { tls: true, client_cert: Some(empty), ..base.clone() }).unwrap_err();
        assert!(matches!(error, Error::TlsConfig { .. }), "{error}");
        // Without trust_cacerts, https trusts the webpki roots.
        assert!(Pool::new(PoolConfig { tls: true, host: "example.com".into(), ..base.clone() }).is_ok());
        let pool = Pool::new(base).unwrap();
        assert!(matches!(pool.request("statefun", Bytes::new()), Err(Error::Path { .. })));
    }

    /// A scratch directory for PEM files, removed on drop.
    struct TestFiles(PathBuf);

    impl TestFiles {
        fn new(name: &str) -> TestFiles {
            let dir = std::env::temp_dir().join(format!("statefun-http-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TestFiles(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TestFiles {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CA, a server certificate for `localhost` and a client certificate, both signed by it.
    struct Pki {
        ca_pem: String,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
        client_cert_pem: String,
        client_key_pem: String,
    }

    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_cert =
            CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &issuer).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client_cert =
            CertificateParams::new(vec!["client".to_string()]).unwrap().signed_by(&client_key, &issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server_chain: vec![server_cert.der().clone()],
            server_key: PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    fn server_tls(pki: &Pki, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_auth {
            true => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            false => builder.with_no_client_auth(),
        };
        Arc::new(builder.with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key()).unwrap())
    }

    #[test]
    fn https_with_a_private_ca() {
        let pki = pki();
        let files = TestFiles::new("https");
        let ca = files.write("ca.pem", &pki.ca_pem);
        let server = Server::start(Some(server_tls(&pki, false)), |request| ok(&request.body));
        let tls = |host: &str| PoolConfig {
            tls: true,
            host: host.into(),
            trust_cacerts: Some(ca.clone()),
            ..config(server.address)
        };
        run(async {
            let pool = Pool::new(tls("localhost")).unwrap();
            for _ in 0..2 {
                let response = pool.post("/f", Bytes::from_static(b"secret"), SECOND).await.unwrap();
                assert_eq!(&response.body[..], b"secret");
            }
            // The certificate names localhost, not 127.0.0.1.
            let pool = Pool::new(tls("127.0.0.1")).unwrap();
            let error = pool.post("/f", Bytes::new(), SECOND).await.unwrap_err();
            assert!(matches!(error, Error::Handshake { .. }), "{error}");
            // Without the CA, the webpki roots do not know it.
            let pool = Pool::new(PoolConfig { trust_cacerts: None, ..tls("localhost") }).unwrap();
            let error = pool.post("/f", Bytes::new(), SECOND).await.unwrap_err();
            assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        });
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].header("host"), Some(format!("localhost:{}", server.address.port()).as_str()));
        assert_eq!(server.accepts.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn https_with_a_client_certificate() {
        let pki = pki();
        let files = TestFiles::new("mtls");
        let ca = files.write("ca.pem", &pki.ca_pem);
        let cert = files.write("client.pem", &pki.client_cert_pem);
        let key = files.write("client.key", &pki.client_key_pem);
        let server = Server::start(Some(server_tls(&pki, true)), |_| ok(b"hello"));
        let base =
            PoolConfig { tls: true, host: "localhost".into(), trust_cacerts: Some(ca), ..config(server.address) };
        run(async {
            let pool =
                Pool::new(PoolConfig { client_cert: Some(cert), client_key: Some(key), ..base.clone() }).unwrap();
            let response = pool.post("/f", Bytes::new(), SECOND).await.unwrap();
            assert_eq!(&response.body[..], b"hello");
            // Without a certificate the server refuses. In TLS 1.3 the client's handshake ends
            // before the server checks, so the refusal shows in the exchange.
            let pool = Pool::new(base).unwrap();
            let error = pool.post("/f", Bytes::new(), SECOND).await.unwrap_err();
            assert!(matches!(error, Error::Http { .. } | Error::Handshake { .. }), "{error}");
        });
        assert_eq!(server.seen().len(), 1);
    }
}
