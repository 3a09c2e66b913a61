//! The HTTP ingress, for people and tools. Every shard accepts on the same port
//! (`SO_REUSEPORT`), and hands each request to the shard that owns its target.
//!
//! - `POST /v1/send/{namespace}/{type}/{id}`: the body is the message, its type name comes
//!   from `Content-Type: application/vnd.{typename}`; `202` once the message is accepted.
//! - `POST /v1/call/{namespace}/{type}/{id}`: the same, then waits for the first message the
//!   function sends to its caller: `200` with it, `504` after the call timeout.
//! - Values of the built-in types `io.statefun.types/{bool,int,long,float,double,string}`
//!   are text both ways: a body `5` with `Content-Type: application/vnd.io.statefun.types/int`
//!   is sent as the int 5 (in StateFun's wire encoding), and such a reply reads `6`. Other
//!   types pass through as bytes.
//! - An `Idempotency-Key` header makes either safe to retry: a request with a key seen before
//!   (within the retention window) gets the first outcome and is not applied again.
//! - `GET /v1/health`: `200` once the shard serves.
//! - `GET /metrics`: every shard's counters, in Prometheus text.
//! - `GET /v1/parked`: the remote addresses parked after their call budget, as a JSON array
//!   of `{"address", "error", "since_ms", "attempts"}`; `POST /v1/parked/retry` makes every
//!   shard's parked addresses try again now.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request as HttpRequest, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use statefun_core::types::{builtin_from_text, builtin_to_text, is_builtin};
use statefun_core::{Address, Error, Outcome, TypeName, TypedValue, Want};

use crate::limits;
use crate::rt::{self, HyperStream, Semaphore, TcpListener};
use crate::shard::ShardNode;

/// The content type prefix that carries a type name, as in StateFun's own HTTP ingress.
const VND_PREFIX: &str = "application/vnd.";

/// The header that makes a retried request safe: the first outcome is kept and given again.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Accepts connections on `listener` for as long as the shard lives.
pub async fn serve(node: Rc<ShardNode>, listener: TcpListener, call_timeout: Duration) {
    let name = node.id.to_string();
    serve_connections(name, listener, move |request| {
        let node = node.clone();
        async move { handle(&node, request, call_timeout).await }
    })
    .await
}

/// Accepts HTTP/1.1 connections on `listener` and answers every request with `handle`, for
/// as long as the shard lives; at most `http_connections_per_shard_max` connections at once
/// (per listener). `name` says whose listener it is in the log.
pub(crate) async fn serve_connections<H, F>(name: impl Display, listener: TcpListener, handle: H)
where
    H: Fn(HttpRequest<Incoming>) -> F + 'static,
    F: Future<Output = Reply> + 'static,
{
    let handle = Rc::new(handle);
    let connections = Rc::new(Semaphore::new(limits::http_connections_per_shard_max));
    loop {
        // Admission: at the bound, stop accepting; the kernel's backlog holds the rest.
        let permit = match connections.acquire_static_permit(1).await {
            Ok(permit) => permit,
            Err(error) => return tracing::error!("{name}: connection semaphore closed: {error}"),
        };
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!("{name}: accept failed: {error}");
                rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        rt::spawn_local(async move {
            let service = hyper::service::service_fn(|request| {
                let reply = handle(request);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                // hyper's timers must be `Send`, glommio's are not: no header timeout, and
                // the connection bound above is what limits idle clients.
                .header_read_timeout(None)
                .serve_connection(HyperStream::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!("http connection ended: {error}");
            }
            drop(permit);
        })
        .detach();
    }
}

pub(crate) type Reply = Response<Full<Bytes>>;

/// A plain-text reply: `body` and a final newline.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A request the ingress turns away: the status and the sentence that says why.
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) String);

impl Refusal {
    pub(crate) fn into_reply(self) -> Reply {
        text(self.0, self.1)
    }
}

/// Which ingress endpoint a path names.
fn json(body: String) -> Reply {
    let mut reply = text(StatusCode::OK, body);
    reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    reply
}

/// The parked addresses as a JSON array.
fn parked_json(parked: &[crate::remote::ParkedAddress]) -> String {
    let entries: Vec<String> = parked
        .iter()
        .map(|parked| {
            format!(
                "{{\"address\":{},\"error\":{},\"since_ms\":{},\"attempts\":{}}}",
                json_string(&parked.address),
                json_string(&parked.error),
                parked.since.0,
                parked.attempts
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    Call,
}

async fn handle(node: &Rc<ShardNode>, request: HttpRequest<Incoming>, call_timeout: Duration) -> Reply {
    let path = request.uri().path().to_owned();
    if path == "/metrics" {
        let mut reply = text(StatusCode::OK, node.metrics_text());
        let version = header::HeaderValue::from_static("text/plain; version=0.0.4");
        reply.headers_mut().insert(header::CONTENT_TYPE, version);
        return reply;
    }
    if path == "/v1/health" {
        return match *request.method() {
            Method::GET => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET for /v1/health"),
        };
    }
    if path == "/v1/parked" {
        return match *request.method() {
            Method::GET => json(parked_json(&node.remote.parked().list())),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET for /v1/parked"),
        };
    }
    if path == "/v1/parked/retry" {
        return match *request.method() {
            Method::POST => {
                let parked = node.remote.parked().len();
                node.retry_parked();
                json(format!("{{\"retrying\":{parked}}}"))
            }
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "use POST for /v1/parked/retry"),
        };
    }
    let (kind, target) = match parse_path(&path) {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal.into_reply(),
    };
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("use POST for {path}"));
    }
    if !node.registry.contains(&target.function) {
        return text(StatusCode::NOT_FOUND, format!("no function is registered for type {}", target.function));
    }
    let key = match idempotency_key(&request) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_reply(),
    };
    let typename = match typename_of(&request) {
        Ok(typename) => typename,
        Err(refusal) => return refusal.into_reply(),
    };
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal.into_reply(),
    };
    let value = match request_value(typename, body) {
        Ok(value) => value,
        Err(refusal) => return refusal.into_reply(),
    };
    let want = match kind {
        Kind::Send => Want::Admission,
        Kind::Call => Want::Answer,
    };
    let mut exchange = node.ingress(target.clone(), value, want, key.as_deref());
    match rt::timeout(call_timeout, exchange.outcome()).await {
        Some(Outcome::Admitted) => text(StatusCode::ACCEPTED, "accepted"),
        Some(Outcome::Reply(value)) => reply_value(value),
        Some(Outcome::Failed(why)) => text(StatusCode::UNPROCESSABLE_ENTITY, why),
        Some(Outcome::Refused(error)) => refused(error),
        None if kind == Kind::Send => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{target} did not accept the message within {} ms", call_timeout.as_millis()),
        ),
        None => {
            text(StatusCode::GATEWAY_TIMEOUT, format!("no reply from {target} within {} ms", call_timeout.as_millis()))
        }
    }
}

/// The reply to a request the shard refused.
pub(crate) fn refused(error: Error) -> Reply {
    match error {
        Error::MailboxFull { .. } | Error::Poisoned(_) => {
            let mut reply = text(StatusCode::SERVICE_UNAVAILABLE, error.to_string());
            reply.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            reply
        }
        Error::UnknownFunction(_) => text(StatusCode::NOT_FOUND, error.to_string()),
        Error::IdempotencyKeyReused { .. } => text(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()),
        _ => text(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// The message a request's body stands for: for a built-in type (`io.statefun.types/int`,
/// ...) the body is its value as text, read into the type's wire encoding; any other type's
/// body is the value's bytes as they are.
fn request_value(typename: TypeName, body: Bytes) -> Result<TypedValue, Refusal> {
    if !is_builtin(&typename) {
        return Ok(TypedValue::new(typename, body));
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return Err(Refusal(StatusCode::BAD_REQUEST, format!("the body is not UTF-8 text, as an {typename} must be")));
    };
    match builtin_from_text(&typename, text) {
        Some(Ok(value)) => Ok(value),
        Some(Err(why)) => Err(Refusal(StatusCode::BAD_REQUEST, format!("body {why}"))),
        None => Ok(TypedValue::new(typename, body)),
    }
}

/// The reply carrying a function's answer, its type name in the `Content-Type`: a built-in
/// type's value as text (`6`, `true`, `hello`), any other value's bytes as they are.
fn reply_value(value: TypedValue) -> Reply {
    let body = match builtin_to_text(&value) {
        None => value.value,
        Some(Ok(text)) => Bytes::from(text),
        Some(Err(why)) => {
            return text(StatusCode::BAD_GATEWAY, format!("the function answered a malformed value: {why}"))
        }
    };
    let mut response = Response::new(Full::new(body));
    let content_type = format!("{VND_PREFIX}{}", value.typename);
    if let Ok(content_type) = header::HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response
}

/// The `Idempotency-Key` header: printable ASCII without spaces, 1 to 512 characters.
fn idempotency_key(request: &HttpRequest<Incoming>) -> Result<Option<String>, Refusal> {
    let Some(key) = request.headers().get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let bad = |why: &str| Refusal(StatusCode::BAD_REQUEST, format!("bad Idempotency-Key: {why}"));
    let key = key.to_str().map_err(|_| bad("use printable ASCII"))?;
    if key.is_empty() || key.len() > statefun_core::limits::name_bytes_max / 2 {
        return Err(bad("give 1 to 512 characters"));
    }
    if key.bytes().any(|byte| !byte.is_ascii_graphic()) {
        return Err(bad("use printable ASCII without spaces"));
    }
    Ok(Some(key.to_string()))
}

/// Splits `/v1/{send|call}/{namespace}/{type}/{id}` (each part percent-decoded; the
/// namespace may contain `/`).
fn parse_path(path: &str) -> Result<(Kind, Address), Refusal> {
    let usage = "expected /v1/send/{namespace}/{type}/{id} or /v1/call/{namespace}/{type}/{id}";
    let (kind, rest) = if let Some(rest) = path.strip_prefix("/v1/send/") {
        (Kind::Send, rest)
    } else if let Some(rest) = path.strip_prefix("/v1/call/") {
        (Kind::Call, rest)
    } else {
        return Err(Refusal(StatusCode::NOT_FOUND, format!("no such endpoint {path}: {usage}")));
    };
    let bad = |why: String| Refusal(StatusCode::BAD_REQUEST, format!("bad path {path}: {why}"));
    let (function, id) = rest.rsplit_once('/').ok_or_else(|| bad(usage.to_string()))?;
    let (namespace, name) = function.rsplit_once('/').ok_or_else(|| bad(usage.to_string()))?;
    let decode = |part: &str, what: &str| {
        percent_decode(part).ok_or_else(|| bad(format!("the {what} is not valid percent-encoded UTF-8")))
    };
    let function = TypeName::new(&decode(namespace, "namespace")?, &decode(name, "type")?)
        .map_err(|error| bad(error.to_string()))?;
    let address = Address::new(function, &decode(id, "id")?).map_err(|error| bad(error.to_string()))?;
    Ok((kind, address))
}

pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn typename_of(request: &HttpRequest<Incoming>) -> Result<TypeName, Refusal> {
    let usage = format!("set Content-Type: {VND_PREFIX}{{namespace}}/{{type}} to give the message's type");
    let Some(content_type) = request.headers().get(header::CONTENT_TYPE) else {
        return Err(Refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("no Content-Type: {usage}")));
    };
    vnd_typename(request).unwrap_or_else(|| {
        let content_type = content_type.to_str().unwrap_or_default();
        Err(Refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("Content-Type {content_type:?}: {usage}")))
    })
}

/// The type name a `Content-Type: application/vnd.{typename}` gives (parameters such as
/// `; charset=utf-8` ignored), or `None` when the request has no such content type.
pub(crate) fn vnd_typename(request: &HttpRequest<Incoming>) -> Option<Result<TypeName, Refusal>> {
    let content_type = request.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let typename = essence.strip_prefix(VND_PREFIX)?;
    Some(TypeName::parse(typename).map_err(|error| {
        Refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("Content-Type {content_type:?}: {error}"))
    }))
}

/// The request's body, at most `http_body_bytes_max` bytes (`413` past it).
pub(crate) async fn read_body(request: HttpRequest<Incoming>) -> Result<Bytes, Refusal> {
    let too_large = || {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {} bytes", limits::http_body_bytes_max),
        )
    };
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits::http_body_bytes_max as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), limits::http_body_bytes_max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(Refusal(StatusCode::BAD_REQUEST, format!("could not read the body: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_kind_and_address() {
        let (kind, address) = parse_path("/v1/call/example/counter/a%20b").unwrap();
        assert_eq!(kind, Kind::Call);
        assert_eq!(address.to_string(), "example/counter/a b");
        let (kind, address) = parse_path("/v1/send/com.example/fns/greeter/x").unwrap();
        assert_eq!(kind, Kind::Send);
        assert_eq!(address.function.namespace(), "com.example/fns");
        assert_eq!(&*address.id, "x");
    }

    #[test]
    fn malformed_paths_are_refused_with_the_reason() {
        assert_eq!(parse_path("/v2/call/a/b/c").unwrap_err().0, StatusCode::NOT_FOUND);
        for bad in ["/v1/call/counter", "/v1/call/a/b", "/v1/call//b/c", "/v1/call/a/b/%zz", "/v1/call/a/b/%ff"] {
            assert_eq!(parse_path(bad).unwrap_err().0, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn built_in_bodies_are_read_as_text() {
        let int = TypeName::parse("io.statefun.types/int").unwrap();
        let value = request_value(int.clone(), Bytes::from_static(b"5")).unwrap();
        assert_eq!(value, TypedValue::of(&5i32));
        let refusal = request_value(int.clone(), Bytes::from_static(b"x")).unwrap_err();
        assert_eq!(refusal.0, StatusCode::BAD_REQUEST);
        assert_eq!(refusal.1, r#"body "x" is not an io.statefun.types/int (a 32-bit integer)"#);
        assert_eq!(request_value(int, Bytes::from_static(&[0xff])).unwrap_err().0, StatusCode::BAD_REQUEST);
        let other = TypeName::parse("example/int").unwrap();
        let value = request_value(other.clone(), Bytes::from_static(&[0xff, b'x'])).unwrap();
        assert_eq!(value, TypedValue::new(other, Bytes::from_static(&[0xff, b'x'])));
    }

    async fn body_of(reply: Reply) -> (StatusCode, String, Bytes) {
        let status = reply.status();
        let content_type = reply.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
        (status, content_type, reply.into_body().collect().await.unwrap().to_bytes())
    }

    #[test]
    fn built_in_replies_are_written_as_text() {
        futures_lite::future::block_on(async {
            let (status, content_type, body) = body_of(reply_value(TypedValue::of(&6i64))).await;
            assert_eq!(
                (status, content_type.as_str(), &body[..]),
                (StatusCode::OK, "application/vnd.io.statefun.types/long", &b"6"[..])
            );
            let (_, _, body) = body_of(reply_value(TypedValue::of(&true))).await;
            assert_eq!(&body[..], b"true");
            let (_, _, body) = body_of(reply_value(TypedValue::of(&"hello".to_string()))).await;
            assert_eq!(&body[..], b"hello");
            let other = TypedValue::new(TypeName::parse("example/bytes").unwrap(), vec![0x0d, 1]);
            let (_, content_type, body) = body_of(reply_value(other)).await;
            assert_eq!((content_type.as_str(), &body[..]), ("application/vnd.example/bytes", &[0x0d, 1][..]));
            let malformed = TypedValue::new(TypeName::parse("io.statefun.types/int").unwrap(), vec![0x0d, 1]);
            assert_eq!(reply_value(malformed).status(), StatusCode::BAD_GATEWAY);
        });
    }
}
