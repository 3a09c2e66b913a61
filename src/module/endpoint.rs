//! HTTP endpoints: `io.statefun.endpoints.v2/http` and `io.statefun.endpoints.v1/http`.

use std::path::PathBuf;
use std::time::Duration;

use statefun_core::TypeName;

use super::yaml::{Fields, Node};
use super::{Endpoint, FunctionPattern, ModuleError, TlsFiles, Transport, UrlTemplate};

/// `maxNumBatchRequests` when the module does not say.
const BATCH_MAX_DEFAULT: u32 = 1000;

/// The placeholder a URL template may hold in its path.
const FUNCTION_NAME_PLACEHOLDER: &str = "{function.name}";

const FUNCTIONS_EXPECTED: &str = "a function type such as \"example/greeter\" or a namespace such as \"example/*\"";
const URL_EXPECTED: &str = "an http:// or https:// URL such as \"http://functions:8000/statefun\"";

/// The transport StateFun uses when none is named.
const ASYNC_TRANSPORT: &str = "io.statefun.transports.v1/async";
/// StateFun's older transport; accepted, with its own timeout defaults.
const OKHTTP_TRANSPORT: &str = "io.statefun.transports.v1/okhttp";

/// The defaults of StateFun's OkHttp client and of v1 endpoints' `timeouts`.
const OKHTTP_CALL_DEFAULT: Duration = Duration::from_secs(60);
const OKHTTP_CONNECT_DEFAULT: Duration = Duration::from_secs(10);

/// Which endpoint kind a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V1,
    V2,
}

impl Transport {
    /// StateFun's defaults for the async transport of v2 endpoints: a 2 minute call budget,
    /// 20 s to connect, idle connections kept 15 s, 1024 of them, payloads up to 32 MiB.
    pub fn async_default() -> Transport {
        Transport {
            call: Duration::from_secs(120),
            connect: Duration::from_secs(20),
            pool_ttl: Duration::from_secs(15),
            pool_size: 1024,
            payload_bytes_max: 32 * 1024 * 1024,
            tls: None,
        }
    }
}

/// Reads the spec of an endpoint document.
pub(super) fn endpoint(spec: &Node<'_>, version: Version) -> Result<Endpoint, ModuleError> {
    let fields = match version {
        Version::V2 => spec.fields(&["functions", "urlPathTemplate", "maxNumBatchRequests", "transport"])?,
        Version::V1 => spec.fields(&["functions", "urlPathTemplate", "maxNumBatchRequests", "timeouts"])?,
    };
    let functions = function_pattern(&fields.require("functions", FUNCTIONS_EXPECTED)?)?;
    let url_node = fields.require("urlPathTemplate", URL_EXPECTED)?;
    let url = url_template(&url_node)?;
    let batch_max = match fields.get("maxNumBatchRequests") {
        None => BATCH_MAX_DEFAULT,
        Some(node) => {
            let batch_max = node.integer("a number of requests", 1, u64::from(u32::MAX))?;
            u32::try_from(batch_max).map_err(|_| node.expected("a number of requests that fits 32 bits"))?
        }
    };
    let transport = match version {
        Version::V2 => match fields.get("transport") {
            None => Transport::async_default(),
            Some(node) => transport(&node)?,
        },
        Version::V1 => {
            let (call, connect) = match fields.get("timeouts") {
                None => (OKHTTP_CALL_DEFAULT, OKHTTP_CONNECT_DEFAULT),
                Some(node) => timeouts(&node, None, None)?,
            };
            Transport { call, connect, ..Transport::async_default() }
        }
    };
    if transport.tls.is_some() && !url.tls {
        return Err(url_node
            .error("the transport names TLS files but the URL is http://; use https:// or remove the TLS files"));
    }
    Ok(Endpoint { functions, url, batch_max, transport })
}

/// `namespace/name` or `namespace/*`.
fn function_pattern(node: &Node<'_>) -> Result<FunctionPattern, ModuleError> {
    let text = node.text(FUNCTIONS_EXPECTED)?;
    let refuse = |why: &str| node.error(format!("expected {FUNCTIONS_EXPECTED}, got {text:?}: {why}"));
    let type_name = TypeName::parse(&text).map_err(|error| refuse(&error.to_string()))?;
    if type_name.namespace().contains('*') {
        return Err(refuse("the namespace may not contain '*'"));
    }
    match type_name.name() {
        "*" => Ok(FunctionPattern::Namespace(type_name.namespace().to_owned())),
        name if name.contains('*') => Err(refuse("'*' stands only for the whole name")),
        _ => Ok(FunctionPattern::Exact(type_name)),
    }
}

/// Parses `urlPathTemplate`.
fn url_template(node: &Node<'_>) -> Result<UrlTemplate, ModuleError> {
    let text = node.text(URL_EXPECTED)?;
    parse_url_template(&text).map_err(|why| node.error(format!("expected {URL_EXPECTED}, got {text:?}: {why}")))
}

/// Parses `scheme://host[:port][/path][?query]`; the error says why not.
pub(super) fn parse_url_template(text: &str) -> Result<UrlTemplate, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("it is not an absolute URL".to_owned());
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        "http+unix" | "https+unix" => {
            return Err(format!("the scheme {scheme:?} (a Unix socket) is not supported; use http or https"));
        }
        _ => return Err(format!("the scheme {scheme:?} is not supported; use http or https")),
    };
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".to_owned());
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err("user information before the host is not supported".to_owned());
    }
    if authority.contains('{') {
        return Err(format!("{FUNCTION_NAME_PLACEHOLDER} may stand only in the path"));
    }
    let (host, port) = host_and_port(authority)?;
    if path.contains('#') {
        return Err("a fragment (#...) is never sent to the server; remove it".to_owned());
    }
    let braces_left = path.replace(FUNCTION_NAME_PLACEHOLDER, "");
    if braces_left.contains(['{', '}']) {
        return Err(format!("the only placeholder is {FUNCTION_NAME_PLACEHOLDER}"));
    }
    // RFC 3986 path and query characters; anything else must be percent-encoded.
    let uri_char = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%".contains(c);
    if let Some(c) = braces_left.chars().find(|&c| !uri_char(c)) {
        return Err(format!("{c:?} may not stand in a URL's path; percent-encode it"));
    }
    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Ok(UrlTemplate { tls, host, port, path })
}

/// Splits `host[:port]`; an IPv6 host is in brackets, which are dropped.
fn host_and_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("the IPv6 host has no closing ']'")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("expected ':' and a port after the IPv6 host")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".to_owned());
    }
    let host_chars_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    let bracketed = authority.starts_with('[');
    if !bracketed && !host.chars().all(host_chars_ok) {
        return Err(format!("the host {host:?} has characters a host name cannot have"));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => Some(port),
            _ => return Err(format!("the port {port:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host.to_owned(), port))
}

impl UrlTemplate {
    /// The path and query of a request to `function`: the template's path with
    /// `{function.name}` replaced by the function type's name (the part after the last
    /// `/`), percent-encoded where a path needs it.
    pub fn path_for(&self, function: &TypeName) -> String {
        if !self.path.contains(FUNCTION_NAME_PLACEHOLDER) {
            return self.path.clone();
        }
        self.path.replace(FUNCTION_NAME_PLACEHOLDER, &encode_path_segment(function.name()))
    }

    /// `host[:port]` for the `Host` header; the port is left out when it is the scheme's
    /// default, and an IPv6 host is put in brackets.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Percent-encodes what may not stand in a path segment as it is (RFC 3986 `pchar`).
fn encode_path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        let plain = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte);
        if plain {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Reads the `transport` of a v2 endpoint.
///
/// Both transport types take every field, and the node honours them all. The defaults
/// follow StateFun: 2 min and 20 s for the async transport, 1 min and 10 s for OkHttp or
/// when a nested `timeouts` is given (StateFun's `timeouts` object has those defaults).
fn transport(node: &Node<'_>) -> Result<Transport, ModuleError> {
    let fields = node.fields(&[
        "type",
        "call",
        "connect",
        "pool_ttl",
        "pool_size",
        "payload_max_bytes",
        "trust_cacerts",
        "client_cert",
        "client_key",
        "client_key_password",
        "timeouts",
    ])?;
    let mut transport = Transport::async_default();
    if let Some(type_node) = fields.get("type") {
        let expected = format!("a transport type, {ASYNC_TRANSPORT} or {OKHTTP_TRANSPORT}");
        match type_node.text(&expected)?.as_str() {
            ASYNC_TRANSPORT => {}
            OKHTTP_TRANSPORT => {
                transport.call = OKHTTP_CALL_DEFAULT;
                transport.connect = OKHTTP_CONNECT_DEFAULT;
            }
            _ => return Err(type_node.expected(&expected)),
        }
    }
    let call = fields.get("call").map(|node| node.timeout()).transpose()?;
    let connect = fields.get("connect").map(|node| node.timeout()).transpose()?;
    match fields.get("timeouts") {
        Some(timeouts_node) => {
            let (call, connect) = timeouts(&timeouts_node, call, connect)?;
            transport.call = call;
            transport.connect = connect;
        }
        None => {
            transport.call = call.unwrap_or(transport.call);
            transport.connect = connect.unwrap_or(transport.connect);
        }
    }
    if let Some(node) = fields.get("pool_ttl") {
        transport.pool_ttl = node.duration()?;
    }
    if let Some(node) = fields.get("pool_size") {
        let pool_size = node.integer("a number of connections", 1, u64::from(u32::MAX))?;
        transport.pool_size = u32::try_from(pool_size).map_err(|_| node.expected("a number of connections"))?;
    }
    if let Some(node) = fields.get("payload_max_bytes") {
        transport.payload_bytes_max = node.integer("a number of bytes", 1, u64::from(u32::MAX))?;
    }
    transport.tls = tls_files(&fields)?;
    Ok(transport)
}

/// Reads a `timeouts` object (`call`, `connect`, `read`, `write`) and returns the call
/// and connect timeouts: read and write are checked, then dropped, as the node's client
/// has no separate read and write timeouts. `call` and `connect` may also have been given
/// beside the object (v2 transports); giving one in both places is an error.
fn timeouts(
    node: &Node<'_>,
    call_beside: Option<Duration>,
    connect_beside: Option<Duration>,
) -> Result<(Duration, Duration), ModuleError> {
    let fields = node.fields(&["call", "connect", "read", "write"])?;
    let both = |name: &str| fields.refuse(name, format!("{name} is given twice, here and beside `timeouts`; keep one"));
    if call_beside.is_some() {
        both("call")?;
    }
    if connect_beside.is_some() {
        both("connect")?;
    }
    let call = match fields.get("call") {
        Some(node) => node.timeout()?,
        None => call_beside.unwrap_or(OKHTTP_CALL_DEFAULT),
    };
    let mut connect = connect_beside.unwrap_or(OKHTTP_CONNECT_DEFAULT);
    for name in ["connect", "read", "write"] {
        let Some(node) = fields.get(name) else { continue };
        let timeout = node.timeout()?;
        if timeout > call {
            return Err(
                node.error(format!("expected a timeout no longer than the call timeout ({call:?}), got {timeout:?}"))
            );
        }
        if name == "connect" {
            connect = timeout;
        }
    }
    Ok((call, connect))
}

/// Reads the TLS files of a transport; `None` when none is named.
fn tls_files(fields: &Fields<'_>) -> Result<Option<TlsFiles>, ModuleError> {
    let path = |name: &str| fields.get(name).map(|node| file_path(&node)).transpose();
    let files = TlsFiles {
        trust_cacerts: path("trust_cacerts")?,
        client_cert: path("client_cert")?,
        client_key: path("client_key")?,
        client_key_password: path("client_key_password")?,
    };
    if files.client_cert.is_some() != files.client_key.is_some() {
        let (given, missing) =
            if files.client_cert.is_some() { ("client_cert", "client_key") } else { ("client_key", "client_cert") };
        let node = fields.require(given, "a file")?;
        return Err(node.error(format!("mutual TLS needs both client_cert and client_key; {missing} is missing")));
    }
    if files.client_key_password.is_some() && files.client_key.is_none() {
        let node = fields.require("client_key_password", "a file")?;
        return Err(node.error("a key password is given without client_key and client_cert"));
    }
    let any = files.trust_cacerts.is_some() || files.client_cert.is_some();
    Ok(any.then_some(files))
}

/// A file named as StateFun names resources: a plain path or a `file:` URL.
fn file_path(node: &Node<'_>) -> Result<PathBuf, ModuleError> {
    const EXPECTED: &str = "a file path such as \"/etc/statefun/ca.pem\" or \"file:/etc/statefun/ca.pem\"";
    let text = node.text(EXPECTED)?;
    if text.starts_with("classpath:") {
        return Err(node.error(format!(
            "got {text:?}, but there is no Java classpath here; give a file path such as \"/etc/statefun/ca.pem\""
        )));
    }
    let path = match text.strip_prefix("file:") {
        None => text.as_str(),
        Some(rest) => match rest.strip_prefix("//") {
            None => rest,
            // `file:///path` or `file://localhost/path`; another host cannot be read.
            Some(authority_and_path) => match authority_and_path.strip_prefix("localhost") {
                Some(path) if path.starts_with('/') => path,
                _ if authority_and_path.starts_with('/') => authority_and_path,
                _ => return Err(node.expected(EXPECTED)),
            },
        },
    };
    if path.is_empty() {
        return Err(node.expected(EXPECTED));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    //! URL templates, function patterns and file paths, each read on its own.

    use super::*;

    #[test]
    fn url_templates_split_into_scheme_host_port_and_path() {
        let url = parse_url_template("http://functions:8000/statefun").unwrap();
        assert_eq!(url, UrlTemplate { tls: false, host: "functions".into(), port: 8000, path: "/statefun".into() });
        assert_eq!(url.authority(), "functions:8000");

        let url = parse_url_template("https://remote-function-host").unwrap();
        assert_eq!(url, UrlTemplate { tls: true, host: "remote-function-host".into(), port: 443, path: "/".into() });
        assert_eq!(url.authority(), "remote-function-host");

        let url = parse_url_template("HTTP://[::1]:80?x=1").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("::1", 80, "/?x=1"));
        assert_eq!(url.authority(), "[::1]");

        let url = parse_url_template("http://10.0.0.7:1108/").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("10.0.0.7", 1108, "/"));
    }

    #[test]
    fn the_function_name_is_put_into_the_path() {
        let url = parse_url_template("http://bar.foo.com:8080/functions/{function.name}?v={function.name}").unwrap();
        let function = TypeName::parse("com.foo.bar/greeter").unwrap();
        assert_eq!(url.path_for(&function), "/functions/greeter?v=greeter");
        let odd = TypeName::parse("ns/a b#c").unwrap();
        assert_eq!(url.path_for(&odd), "/functions/a%20b%23c?v=a%20b%23c");
        let plain = parse_url_template("http://f:1/statefun").unwrap();
        assert_eq!(plain.path_for(&function), "/statefun");
    }

    #[test]
    fn bad_url_templates_say_why() {
        let cases = [
            ("functions:8000/statefun", "not an absolute URL"),
            ("ftp://functions/statefun", "scheme \"ftp\" is not supported"),
            ("http+unix://%2Ftmp%2Fsock/statefun", "Unix socket"),
            ("http://:8000/", "host is empty"),
            ("http://f:0/", "port \"0\""),
            ("http://f:99999/", "port \"99999\""),
            ("http://u@f/", "user information"),
            ("http://{function.name}:8000/", "only in the path"),
            ("http://f/{function.namespace}", "only placeholder"),
            ("http://f/a#b", "fragment"),
            ("http://f/a b", "whitespace"),
            ("http://[::1/", "closing"),
            ("http://a:b:80/", "characters a host name cannot have"),
            ("http://f/fünf", "'ü' may not stand"),
            ("http://f/a|b", "'|' may not stand"),
        ];
        for (text, why) in cases {
            let error = parse_url_template(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn paths_are_plain_or_file_urls() {
        let doc = std::rc::Rc::new(super::super::yaml::Doc { file: "m".into(), number: 1, kind: None, entry: None });
        let read = |text: &str| {
            let value = serde_norway::Value::String(text.to_owned());
            file_path(&Node::new(&doc, "p", &value))
        };
        assert_eq!(read("/etc/ca.pem").unwrap(), PathBuf::from("/etc/ca.pem"));
        assert_eq!(read("certs/ca.pem").unwrap(), PathBuf::from("certs/ca.pem"));
        assert_eq!(read("file:/etc/ca.pem").unwrap(), PathBuf::from("/etc/ca.pem"));
        assert_eq!(read("file:///etc/ca.pem").unwrap(), PathBuf::from("/etc/ca.pem"));
        assert_eq!(read("file://localhost/etc/ca.pem").unwrap(), PathBuf::from("/etc/ca.pem"));
        assert!(read("file://elsewhere/etc/ca.pem").is_err());
        assert!(read("file:").is_err());
        assert!(read("classpath:ca.pem").unwrap_err().message.contains("no Java classpath here"));
    }
}
