//! The StateFun playground's HTTP ingress and egress, as the `apache/flink-statefun-playground`
//! image serves them (`IngressWebServer`, `EgressWebServer`, `PlaygroundEgress` there), so
//! that the public StateFun examples work with their own `curl` commands.
//!
//! - Ingress (`io.statefun.playground.v1/ingress`): `PUT` or `POST /{namespace}/{type}/{id}`
//!   sends the body, as it is (not wrapper-encoded), to that function, without a caller. Its
//!   type name comes from `Content-Type: application/vnd.{typename}`; any other content type,
//!   or none, means `io.statefun.types/string`. `200` with an empty body once the message is
//!   admitted.
//! - Egress (`io.statefun.playground.v1/egress`): functions send egress messages to
//!   `io.statefun.playground/egress` whose values are `io.statefun.playground/EgressRecord`,
//!   JSON `{"topic": "...", "payload": "..."}`. `GET /{topic}` takes the oldest record of a
//!   configured topic: `200` with its payload, `404` with an empty body when there is none,
//!   `405` for a topic that is not configured.
//!
//! Where this differs from the image, on purpose:
//! - The ingress answers once the message is admitted (durable in its target's mailbox), not
//!   once it sits in an in-memory queue. Where the image answers any failure with an empty
//!   `500` (a path without three parts) or accepts what later fails the job (an unknown
//!   function), this answers why: `400` for a bad path, `404` for an unknown function, `413`
//!   for a body past the limit, `503` for a full mailbox, `405` for a method other than `PUT`
//!   or `POST` (the image takes any method). Content-type parameters (`; charset=utf-8`) are
//!   not part of the type name.
//! - A malformed egress record (another value type, bad JSON, an unknown topic) fails the
//!   image's Flink job, which restarts; here it is refused and logged, and nothing else stops.
//! - A full topic drops its oldest record (the image drops the newest), see
//!   [`topic_records_max`]; only `GET` takes a record (the image takes one on any method).

// Limits read as quantities, as in `crate::limits`.
#![allow(non_upper_case_globals)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request as HttpRequest, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use statefun_core::{Address, Egress, Error, Outcome, TypeName, TypedValue, ValueType, Want};

use crate::ingress::{self, percent_decode, text, Refusal, Reply};
use crate::limits::{ingress_admission_wait_ms_max, topic_bytes_max, topic_records_max};
use crate::rt::{self, TcpListener};
use crate::shard::ShardNode;

/// The egress every playground record is sent to, `io.statefun.playground/egress`.
pub const EGRESS_NAMESPACE: &str = "io.statefun.playground";
pub const EGRESS_NAME: &str = "egress";

/// The value type of a playground egress record.
pub const EGRESS_RECORD_TYPE: &str = "io.statefun.playground/EgressRecord";

const _: () = assert!(topic_bytes_max >= statefun_core::limits::value_bytes_max);

/// The egress side: records by topic, shared by all shards. It stands for an external system,
/// like the broker a Kafka egress writes to, so it sits behind a `Mutex` (one per topic),
/// outside the shards' data path.
///
/// Bounded: a topic keeps at most [`topic_records_max`] records and [`topic_bytes_max`]
/// payload bytes; past either the oldest record is dropped with a `warn!`.
#[derive(Debug)]
pub struct PlaygroundTopics {
    /// The configured topics, fixed at start.
    topics: BTreeMap<String, Mutex<Topic>>,
}

#[derive(Debug, Default)]
struct Topic {
    records: VecDeque<Bytes>,
    /// The payload bytes in `records`.
    bytes: usize,
    /// Records dropped to keep the bounds, since start.
    dropped: u64,
}

/// A `GET` for a topic the playground egress does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTopic {
    pub topic: String,
    /// The topics it has, for the message.
    pub configured: Vec<String>,
}

impl fmt::Display for UnknownTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the playground egress has no topic {:?} (its topics: {})", self.topic, self.configured.join(", "))
    }
}

impl std::error::Error for UnknownTopic {}

impl PlaygroundTopics {
    pub fn new(topics: Vec<String>) -> Self {
        PlaygroundTopics { topics: topics.into_iter().map(|topic| (topic, Mutex::default())).collect() }
    }

    /// Takes an egress record if it belongs to the playground egress: `Ok(true)` taken,
    /// `Ok(false)` not a playground record (another egress), `Err(why)` a playground record
    /// that is malformed (another value type, bad JSON, an unknown topic); the caller logs it.
    pub fn offer(&self, egress: &Egress) -> Result<bool, String> {
        if egress.egress.namespace() != EGRESS_NAMESPACE || egress.egress.name() != EGRESS_NAME {
            return Ok(false);
        }
        let value = &egress.value;
        if value.typename.as_str() != EGRESS_RECORD_TYPE {
            return Err(format!(
                "a message to the egress {} has type {}; the playground egress takes {EGRESS_RECORD_TYPE}, \
                 JSON {{\"topic\": ..., \"payload\": ...}}",
                egress.egress, value.typename
            ));
        }
        let record =
            EgressRecord::parse(&value.value).map_err(|why| format!("malformed {EGRESS_RECORD_TYPE}: {why}"))?;
        let Some(topic) = self.topics.get(&record.topic) else {
            let unknown = UnknownTopic { topic: record.topic, configured: self.configured() };
            return Err(format!("{EGRESS_RECORD_TYPE} for an unknown topic: {unknown}"));
        };
        lock(topic).push(&record.topic, Bytes::from(record.payload.into_bytes()));
        Ok(true)
    }

    /// Takes the oldest record of `topic`: `Ok(None)` when it has none.
    pub fn pop(&self, topic: &str) -> Result<Option<Bytes>, UnknownTopic> {
        let Some(records) = self.topics.get(topic) else {
            return Err(UnknownTopic { topic: topic.to_string(), configured: self.configured() });
        };
        Ok(lock(records).pop())
    }

    fn configured(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }
}

/// Locks a topic. A panic while it was held cannot leave it half-changed in a way that
/// matters (at worst its byte count is off), so a poisoned lock is used as it is.
fn lock(topic: &Mutex<Topic>) -> MutexGuard<'_, Topic> {
    topic.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Topic {
    fn push(&mut self, name: &str, payload: Bytes) {
        self.bytes += payload.len();
        self.records.push_back(payload);
        while self.records.len() > topic_records_max || self.bytes > topic_bytes_max {
            let Some(oldest) = self.records.pop_front() else { break };
            self.bytes -= oldest.len();
            self.dropped += 1;
            // Every drop would flood the log of a topic nobody reads: the 1st, 2nd, 4th, ...
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    "playground egress topic {name:?} is full ({} records, {} bytes; at most {topic_records_max} \
                     and {topic_bytes_max}): dropped its oldest record, {} so far",
                    self.records.len(),
                    self.bytes,
                    self.dropped
                );
            }
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        let payload = self.records.pop_front()?;
        self.bytes -= payload.len();
        Some(payload)
    }
}

/// The playground ingress of one shard: accepts on `listener` (`SO_REUSEPORT`, every shard)
/// and hands each message to the shard that owns its target, answering `200` once it is
/// admitted.
pub async fn serve_ingress(node: Rc<ShardNode>, listener: TcpListener) {
    let name = format!("{} playground ingress", node.id);
    ingress::serve_connections(name, listener, move |request| {
        let node = node.clone();
        async move { ingress_request(&node, request).await }
    })
    .await
}

/// The playground egress HTTP server of one shard.
pub async fn serve_egress(topics: Arc<PlaygroundTopics>, listener: TcpListener) {
    ingress::serve_connections("playground egress", listener, move |request| {
        let reply = egress_request(&topics, &request);
        async move { reply }
    })
    .await
}

async fn ingress_request(node: &Rc<ShardNode>, request: HttpRequest<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let target = match parse_address(&path) {
        Ok(target) => target,
        Err(refusal) => return refusal.into_reply(),
    };
    if !matches!(*request.method(), Method::PUT | Method::POST) {
        let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, format!("use PUT or POST to send a message to {path}"));
        reply.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("PUT, POST"));
        return reply;
    }
    if !node.registry.contains(&target.function) {
        return ingress::refused(Error::UnknownFunction(target.function));
    }
    let typename = match ingress::vnd_typename(&request) {
        Some(Ok(typename)) => typename,
        Some(Err(refusal)) => return refusal.into_reply(),
        // Without `application/vnd.{typename}`: `io.statefun.types/string`, as the playground.
        None => <String as ValueType>::typename(),
    };
    let body = match ingress::read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal.into_reply(),
    };
    // The body as it is, whatever the type: the playground does not wrapper-encode.
    let mut exchange = node.ingress(target.clone(), TypedValue::new(typename, body), Want::Admission, None);
    let wait = Duration::from_millis(ingress_admission_wait_ms_max);
    match rt::timeout(wait, exchange.outcome()).await {
        Some(Outcome::Admitted | Outcome::Reply(_)) => empty(StatusCode::OK),
        Some(Outcome::Refused(error)) => ingress::refused(error),
        Some(Outcome::Failed(why)) => text(StatusCode::INTERNAL_SERVER_ERROR, why),
        None => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{target} did not accept the message within {ingress_admission_wait_ms_max} ms"),
        ),
    }
}

fn egress_request(topics: &PlaygroundTopics, request: &HttpRequest<Incoming>) -> Reply {
    let path = request.uri().path();
    let raw = path.strip_prefix('/').unwrap_or(path);
    let topic = percent_decode(raw).unwrap_or_else(|| raw.to_string());
    if request.method() != Method::GET {
        let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, format!("use GET /{{topic}} to take a record of {path}"));
        reply.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return reply;
    }
    match topics.pop(&topic) {
        Ok(Some(payload)) => {
            let mut reply = Response::new(Full::new(payload));
            let utf8 = header::HeaderValue::from_static("text/plain; charset=utf-8");
            reply.headers_mut().insert(header::CONTENT_TYPE, utf8);
            reply
        }
        // As the playground: an empty topic is a bare 404, so a polling loop prints nothing.
        Ok(None) => empty(StatusCode::NOT_FOUND),
        Err(unknown) => text(StatusCode::METHOD_NOT_ALLOWED, unknown.to_string()),
    }
}

fn empty(status: StatusCode) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = status;
    reply
}

/// Splits `/{namespace}/{type}/{id}`, each part percent-decoded. As in the playground,
/// trailing slashes are ignored and the namespace has no `/`.
fn parse_address(path: &str) -> Result<Address, Refusal> {
    let usage = "expected /{namespace}/{type}/{id}";
    let bad = |why: String| Refusal(StatusCode::BAD_REQUEST, format!("bad path {path}: {why}"));
    let parts: Vec<&str> = path.strip_prefix('/').unwrap_or(path).trim_end_matches('/').split('/').collect();
    let [namespace, name, id] = parts[..] else { return Err(bad(usage.to_string())) };
    let decode = |part: &str, what: &str| {
        percent_decode(part).ok_or_else(|| bad(format!("the {what} is not valid percent-encoded UTF-8; {usage}")))
    };
    let (namespace, name, id) = (decode(namespace, "namespace")?, decode(name, "type")?, decode(id, "id")?);
    if name.contains('/') {
        return Err(bad(format!("the type contains a /; {usage}")));
    }
    let function = TypeName::new(&namespace, &name).map_err(|error| bad(format!("{error}; {usage}")))?;
    Address::new(function, &id).map_err(|error| bad(format!("{error}; {usage}")))
}

/// An `io.statefun.playground/EgressRecord`, read as the playground reads it (Jackson, into
/// two `String` fields): a JSON object with exactly the fields `topic` and `payload`, both
/// present and not `null`; a number or boolean stands for its text, an object or array is an
/// error, as is any other field; of a repeated field the last one counts.
#[derive(Debug, PartialEq, Eq)]
struct EgressRecord {
    topic: String,
    payload: String,
}

impl EgressRecord {
    fn parse(bytes: &[u8]) -> Result<EgressRecord, String> {
        let text = std::str::from_utf8(bytes).map_err(|error| format!("not UTF-8: {error}"))?;
        let mut json = Json { text, at: 0 };
        let (mut topic, mut payload) = (None, None);
        json.skip_space();
        json.expect(b'{')?;
        json.skip_space();
        if json.peek() == Some(b'}') {
            json.at += 1;
        } else {
            loop {
                json.skip_space();
                let at = json.at;
                let field = json.string()?;
                json.skip_space();
                json.expect(b':')?;
                json.skip_space();
                let slot = match field.as_str() {
                    "topic" => &mut topic,
                    "payload" => &mut payload,
                    _ => return Err(format!("at byte {at}: unknown field {field:?}; expected topic and payload")),
                };
                let at = json.at;
                *slot = Some(json.scalar()?.ok_or_else(|| format!("at byte {at}: {field} is null"))?);
                json.skip_space();
                match json.peek() {
                    Some(b',') => json.at += 1,
                    Some(b'}') => {
                        json.at += 1;
                        break;
                    }
                    _ => return Err(json.unexpected("',' or '}'")),
                }
            }
        }
        json.skip_space();
        if json.at != json.text.len() {
            return Err(json.unexpected("the end after the object"));
        }
        match (topic, payload) {
            (Some(topic), Some(payload)) => Ok(EgressRecord { topic, payload }),
            (None, _) => Err("no topic field".to_string()),
            (_, None) => Err("no payload field".to_string()),
        }
    }
}

/// Just enough of a JSON reader for an [`EgressRecord`]: strings and scalars, no nesting.
struct Json<'a> {
    text: &'a str,
    /// A byte offset; always at a character boundary between calls.
    at: usize,
}

impl Json<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn unexpected(&self, expected: &str) -> String {
        match self.text.get(self.at..).and_then(|rest| rest.chars().next()) {
            Some(found) => format!("at byte {}: expected {expected}, found {found:?}", self.at),
            None => format!("at byte {}: expected {expected}, found the end", self.at),
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("{:?}", char::from(byte))))
        }
    }

    /// A string, a number or boolean as its text, or `None` for `null`.
    fn scalar(&mut self) -> Result<Option<String>, String> {
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            Some(b'-' | b'0'..=b'9') => self.number().map(Some),
            Some(b'{' | b'[') => Err(self.unexpected("a string")),
            _ => {
                for word in ["true", "false", "null"] {
                    if self.text[self.at..].starts_with(word) {
                        self.at += word.len();
                        return Ok((word != "null").then(|| word.to_string()));
                    }
                }
                Err(self.unexpected("a string"))
            }
        }
    }

    /// A JSON number, as its text.
    fn number(&mut self) -> Result<String, String> {
        let start = self.at;
        let digits = |json: &mut Self| {
            let from = json.at;
            while json.peek().is_some_and(|byte| byte.is_ascii_digit()) {
                json.at += 1;
            }
            json.at > from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        if self.peek() == Some(b'0') {
            self.at += 1;
        } else if !digits(self) {
            return Err(self.unexpected("a digit"));
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !digits(self) {
                return Err(self.unexpected("a digit"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !digits(self) {
                return Err(self.unexpected("a digit"));
            }
        }
        Ok(self.text[start..self.at].to_string())
    }

    /// A JSON string, unescaped.
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character at once: they
            // are all ASCII, so the run ends at a character boundary.
            let rest = &self.text[self.at..];
            let run = rest.find(|c: char| c == '"' || c == '\\' || c < ' ').unwrap_or(rest.len());
            out.push_str(&rest[..run]);
            self.at += run;
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {}
                Some(_) => {
                    self.at -= 1;
                    return Err(self.unexpected("an escaped control character"));
                }
                None => return Err(self.unexpected("'\"'")),
            }
            let escaped = match self.next() {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => self.unicode_escape()?,
                _ => {
                    self.at -= 1;
                    return Err(self.unexpected("an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)"));
                }
            };
            out.push(escaped);
        }
    }

    /// The character of a `\uXXXX` escape (after the `u`), a surrogate pair as one character.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let high = self.hex4()?;
        if !(0xd800..0xdc00).contains(&high) {
            return char::from_u32(high).ok_or_else(|| format!("at byte {}: a lone low surrogate", self.at));
        }
        if !self.text[self.at..].starts_with("\\u") {
            return Err(format!("at byte {}: a high surrogate without its low half", self.at));
        }
        self.at += 2;
        let low = self.hex4()?;
        if !(0xdc00..0xe000).contains(&low) {
            return Err(format!("at byte {}: a high surrogate without its low half", self.at));
        }
        let code = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
        char::from_u32(code).ok_or_else(|| format!("at byte {}: not a character", self.at))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let hex = self.text.get(self.at..self.at + 4).filter(|hex| hex.bytes().all(|byte| byte.is_ascii_hexdigit()));
        let Some(hex) = hex else { return Err(self.unexpected("four hex digits")) };
        self.at += 4;
        u32::from_str_radix(hex, 16).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(egress: &str, typename: &str, value: &str) -> Egress {
        Egress {
            egress: TypeName::parse(egress).unwrap(),
            value: TypedValue::new(TypeName::parse(typename).unwrap(), value.to_string()),
        }
    }

    fn record(topic: &str, payload: &str) -> Egress {
        let json = format!(r#"{{"topic": "{topic}", "payload": "{payload}"}}"#);
        egress("io.statefun.playground/egress", EGRESS_RECORD_TYPE, &json)
    }

    fn topics() -> PlaygroundTopics {
        PlaygroundTopics::new(vec!["greetings".to_string(), "receipts".to_string()])
    }

    #[test]
    fn records_are_taken_oldest_first_per_topic() {
        let topics = topics();
        assert_eq!(topics.pop("greetings"), Ok(None));
        assert_eq!(topics.offer(&record("greetings", "Hello Bob")), Ok(true));
        assert_eq!(topics.offer(&record("receipts", "socks: 3")), Ok(true));
        assert_eq!(topics.offer(&record("greetings", "Hello again Bob")), Ok(true));
        assert_eq!(topics.pop("greetings"), Ok(Some(Bytes::from("Hello Bob"))));
        assert_eq!(topics.pop("greetings"), Ok(Some(Bytes::from("Hello again Bob"))));
        assert_eq!(topics.pop("greetings"), Ok(None));
        assert_eq!(topics.pop("receipts"), Ok(Some(Bytes::from("socks: 3"))));
    }

    #[test]
    fn an_unknown_topic_is_an_error_naming_the_configured_ones() {
        let unknown = topics().pop("nope").unwrap_err();
        assert_eq!(unknown.topic, "nope");
        assert_eq!(
            unknown.to_string(),
            r#"the playground egress has no topic "nope" (its topics: greetings, receipts)"#
        );
        let why = topics().offer(&record("nope", "x")).unwrap_err();
        assert!(why.contains(r#"no topic "nope""#), "{why}");
    }

    #[test]
    fn records_for_other_egresses_are_not_taken() {
        let kafka = egress("io.statefun.kafka/egress", EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": "x"}"#);
        assert_eq!(topics().offer(&kafka), Ok(false));
        let other = egress("io.statefun.playground/other", EGRESS_RECORD_TYPE, "{}");
        assert_eq!(topics().offer(&other), Ok(false));
    }

    #[test]
    fn malformed_playground_records_are_refused_with_the_reason() {
        let topics = topics();
        let cases = [
            ("example/Greeting", r#"{"topic": "greetings", "payload": "x"}"#, "has type example/Greeting"),
            (EGRESS_RECORD_TYPE, "not json", "expected '{'"),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings"}"#, "no payload field"),
            (EGRESS_RECORD_TYPE, r#"{"payload": "x"}"#, "no topic field"),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": null}"#, "payload is null"),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": {"a": 1}}"#, "expected a string"),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": "x", "key": "k"}"#, "unknown field \"key\""),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": "x"} {}"#, "expected the end"),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": "x""#, "expected ',' or '}'"),
            (EGRESS_RECORD_TYPE, r#"{"topic": "greetings", "payload": "\q"}"#, "expected an escape"),
        ];
        for (typename, value, why) in cases {
            let error = topics.offer(&egress("io.statefun.playground/egress", typename, value)).unwrap_err();
            assert!(error.contains(why), "{value}: {error}");
        }
        assert_eq!(topics.pop("greetings"), Ok(None), "nothing malformed was kept");
    }

    #[test]
    fn json_is_read_as_jackson_reads_it_into_strings() {
        let parse = |json: &str| EgressRecord::parse(json.as_bytes());
        let record = parse(r#" { "payload" : "a\"b\\c\/d\n\u00e9\ud83d\ude00" , "topic":"t" } "#).unwrap();
        assert_eq!(record, EgressRecord { topic: "t".into(), payload: "a\"b\\c/d\né😀".into() });
        assert_eq!(parse(r#"{"topic": "t", "payload": -1.5e3}"#).unwrap().payload, "-1.5e3");
        assert_eq!(parse(r#"{"topic": "t", "payload": true}"#).unwrap().payload, "true");
        assert_eq!(parse(r#"{"topic": "t", "payload": "a", "payload": "b"}"#).unwrap().payload, "b");
        assert_eq!(parse(r#"{"topic": "t", "payload": "snow ☃ man"}"#).unwrap().payload, "snow ☃ man");
        for bad in
            [r#"{"topic": "t", "payload": 01}"#, r#"{"topic": "t", "payload": "\ud83d"}"#, "{\"topic\": \"t\x01\"}"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(EgressRecord::parse(&[b'"', 0xff]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let valid = r#"{"topic": "t\u00e9", "payload": "é x\ud83d\ude00y", "n": -0.5e+1}"#.as_bytes();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut bytes = valid.to_vec();
            for _ in 0..1 + random() % 4 {
                let at = (random() as usize) % bytes.len();
                match random() % 3 {
                    0 => bytes[at] = random() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, b"\"\\{}:,u0d"[(random() % 9) as usize]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let _ = EgressRecord::parse(&bytes);
        }
    }

    #[test]
    fn a_full_topic_drops_its_oldest_records() {
        let topics = PlaygroundTopics::new(vec!["t".to_string()]);
        for n in 0..topic_records_max + 3 {
            topics.offer(&record("t", &n.to_string())).unwrap();
        }
        assert_eq!(topics.pop("t"), Ok(Some(Bytes::from("3"))), "the three oldest are gone");
        let topic = lock(&topics.topics["t"]);
        assert_eq!((topic.records.len(), topic.dropped), (topic_records_max - 1, 3));
        drop(topic);
        // The byte bound holds for large payloads too.
        let big = "x".repeat(statefun_core::limits::value_bytes_max / 2);
        for _ in 0..2 * topic_bytes_max / big.len() {
            topics.offer(&record("t", &big)).unwrap();
        }
        let topic = lock(&topics.topics["t"]);
        assert!(topic.bytes <= topic_bytes_max);
        assert_eq!(topic.bytes, topic.records.iter().map(Bytes::len).sum::<usize>());
    }

    #[test]
    fn ingress_paths_are_namespace_type_id() {
        let address = parse_address("/greeter.fns/user/cde1").unwrap();
        assert_eq!(address.to_string(), "greeter.fns/user/cde1");
        assert_eq!(
            parse_address("/com.example/user-shopping-cart/1/").unwrap().to_string(),
            "com.example/user-shopping-cart/1"
        );
        assert_eq!(parse_address("/example/person/a%20b").unwrap().id.as_ref(), "a b");
        for bad in ["/", "/a/b", "/a/b/c/d", "/a//c", "//b/c", "/a/b%2Fx/c", "/a/b/%zz"] {
            let refusal = parse_address(bad).unwrap_err();
            assert_eq!(refusal.0, StatusCode::BAD_REQUEST, "{bad}");
            assert!(refusal.1.contains("expected /{namespace}/{type}/{id}"), "{bad}: {}", refusal.1);
        }
    }

    #[test]
    fn the_egress_server_answers_as_the_playground_does() -> anyhow::Result<()> {
        let topics = Arc::new(topics());
        topics.offer(&record("greetings", "Hello Bob")).unwrap();
        let (sender, address) = std::sync::mpsc::channel();
        let server = topics.clone();
        // The server runs until the test process ends.
        let _executor = rt::start_pinned("playground-egress-test", 0, None, move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            sender.send(listener.local_addr().expect("a bound address")).expect("the test waits");
            serve_egress(server, listener).await;
        })?;
        let url = format!("http://{}", address.recv()?);
        let status = |result: Result<ureq::Response, ureq::Error>| match result {
            Ok(response) => (response.status(), response.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap_or_default()),
            Err(error) => panic!("{error}"),
        };
        assert_eq!(status(ureq::get(&format!("{url}/greetings")).call()), (200, "Hello Bob".to_string()));
        assert_eq!(status(ureq::get(&format!("{url}/greetings")).call()), (404, String::new()));
        let (code, body) = status(ureq::get(&format!("{url}/nope")).call());
        assert_eq!(
            (code, body.trim()),
            (405, r#"the playground egress has no topic "nope" (its topics: greetings, receipts)"#)
        );
        topics.offer(&record("greetings", "again")).unwrap();
        assert_eq!(status(ureq::post(&format!("{url}/greetings")).call()).0, 405, "only GET takes a record");
        assert_eq!(status(ureq::get(&format!("{url}/greetings")).call()), (200, "again".to_string()));
        Ok(())
    }
}
