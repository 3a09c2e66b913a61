//! The native protocol target (`quic://HOST:PORT`): requests go through the statefun client
//! library, straight to the shard that owns each key.
//!
//! The workload is described as for HTTP, and read the same way: `--path` names the endpoint
//! and the target (`/v1/call/{namespace}/{type}/{id}` or `/v1/send/...`, `{key}` filled in per
//! request), the `Content-Type: application/vnd.{typename}` header gives the message's type
//! name, `--body` its value. Each lane (thread) holds one client, that is one QUIC connection
//! per shard, and its workers share it: `--concurrency` is then the number of requests in
//! flight, multiplexed on those connections.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use statefun_core::{Address, TypeName, TypedValue};
use statefun_net::client::{Client, ClientConfig};
use statefun_net::tls;

use crate::http::Failure;
use crate::template::Template;
use crate::Error;

/// Where requests go, and how to trust and be trusted by the node.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: SocketAddr,
    pub config: ClientConfig,
}

/// How a `quic://` target finds its trust anchor and token.
#[derive(Debug, Clone)]
pub struct Credentials<'a> {
    /// The node's data directory: its development certificate and client token.
    pub data_dir: &'a Path,
    /// A certificate (or CA) file to trust instead of the development certificate.
    pub ca: Option<&'a PathBuf>,
    /// The client token instead of the data directory's.
    pub token: Option<&'a str>,
    /// The name the server's certificate must carry.
    pub server_name: &'a str,
}

impl Target {
    /// Parses `quic://HOST:PORT`; `None` for any other scheme.
    pub fn parse(text: &str, credentials: &Credentials<'_>) -> Option<Result<Target, Error>> {
        let authority = text.strip_prefix("quic://")?;
        Some(Target::resolve(text, authority.trim_end_matches('/'), credentials))
    }

    fn resolve(text: &str, authority: &str, credentials: &Credentials<'_>) -> Result<Target, Error> {
        let address = authority
            .to_socket_addrs()
            .map_err(|error| Error::config(format!("--target {text:?}: {error}; expected quic://HOST:PORT")))?
            .next()
            .ok_or_else(|| Error::config(format!("--target {text:?}: the host has no address")))?;
        let files = tls::DevFiles::in_data_dir(credentials.data_dir);
        let anchor = credentials.ca.cloned().unwrap_or(files.cert.clone());
        let tls = tls::client_config(&anchor).map_err(|error| Error::config(format!("--target {text:?}: {error}")))?;
        let token = match credentials.token {
            Some(token) => token.to_string(),
            None => files.read_token().map_err(|error| Error::config(format!("--target {text:?}: {error}")))?,
        };
        let config = ClientConfig { connect: address, tls, server_name: credentials.server_name.to_string(), token };
        Ok(Target { address, config })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quic://{}", self.address)
    }
}

/// The request a run sends, with its key still to fill in.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    function: TypeName,
    id: Template,
    typename: TypeName,
    body: Template,
    /// `call` (wait for the reply) or `send` (wait for durability).
    call: bool,
}

impl RequestSpec {
    /// Reads the workload as given for HTTP: `--path /v1/{call|send}/{ns}/{type}/{id}`, the
    /// `Content-Type: application/vnd.{typename}` header, the body.
    pub fn new(path: &str, body: &str, headers: &[String]) -> Result<RequestSpec, Error> {
        let usage = "with a quic:// target, --path is /v1/call/{namespace}/{type}/{id} or /v1/send/...";
        let bad = |why: String| Error::config(format!("--path {path:?}: {why}; {usage}"));
        let (call, rest) = if let Some(rest) = path.strip_prefix("/v1/call/") {
            (true, rest)
        } else if let Some(rest) = path.strip_prefix("/v1/send/") {
            (false, rest)
        } else {
            return Err(bad("not a call or send".into()));
        };
        let (function, id) = rest.rsplit_once('/').ok_or_else(|| bad("no id".into()))?;
        let function = TypeName::parse(function).map_err(|error| bad(error.to_string()))?;
        let content_type = headers
            .iter()
            .filter_map(|header| header.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.trim().to_string())
            .ok_or_else(|| Error::config("with a quic:// target, give the message's type as --header 'Content-Type: application/vnd.{typename}'"))?;
        let typename = content_type
            .strip_prefix("application/vnd.")
            .and_then(|typename| TypeName::parse(typename).ok())
            .ok_or_else(|| {
                Error::config(format!(
                    "--header Content-Type {content_type:?}: expected application/vnd.{{namespace}}/{{type}}"
                ))
            })?;
        Ok(RequestSpec { function, id: Template::parse(id), typename, body: Template::parse(body), call })
    }
}

/// A worker's share of its lane's client.
#[derive(Debug, Clone)]
pub struct Connection {
    client: Client,
}

fn failure(error: statefun_net::Error) -> Failure {
    match error {
        error @ statefun_net::Error::Connect { .. } => Failure::Connect(error.to_string()),
        error if error.is_permanent() => Failure::Connect(error.to_string()),
        statefun_net::Error::GaveUp(..) => Failure::Timeout,
        other => Failure::Broken(other.to_string()),
    }
}

impl Connection {
    /// Connects a lane's client: one QUIC connection per shard, learnt from the target.
    pub async fn open(target: &Target) -> Result<Connection, Failure> {
        let client = Client::connect(target.config.clone()).await.map_err(failure)?;
        Ok(Connection { client })
    }

    /// Sends the request for key number `key` and waits for its outcome.
    pub async fn send(&self, spec: &RequestSpec, key: u64) -> Result<(), Failure> {
        let target = Address::new(spec.function.clone(), &spec.id.render(key))
            .map_err(|error| Failure::Request(error.to_string()))?;
        let value = TypedValue::new(spec.typename.clone(), spec.body.render(key));
        let outcome = if spec.call {
            self.client.call(&target, &value).await.map(drop)
        } else {
            self.client.send(&target, &value).await
        };
        outcome.map_err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_description_of_a_workload_reads_as_a_native_request() {
        let headers = ["Content-Type: application/vnd.example/delta".to_string()];
        let spec = RequestSpec::new("/v1/call/example/counter/{key}", "1", &headers).unwrap();
        assert_eq!(spec.function.as_str(), "example/counter");
        assert_eq!(spec.id.render(7), "k7");
        assert_eq!(spec.typename.as_str(), "example/delta");
        assert!(spec.call);
        let send = RequestSpec::new("/v1/send/com.example/fns/greeter/{key}", "x", &headers).unwrap();
        assert_eq!((send.function.namespace(), send.call), ("com.example/fns", false));
    }

    #[test]
    fn paths_and_types_that_do_not_fit_are_refused_with_the_reason() {
        let headers = ["Content-Type: application/vnd.example/delta".to_string()];
        let error = RequestSpec::new("/counter/{key}/add", "1", &headers).unwrap_err().to_string();
        assert!(error.contains("not a call or send"), "{error}");
        let error = RequestSpec::new("/v1/call/example/counter/{key}", "1", &[]).unwrap_err().to_string();
        assert!(error.contains("Content-Type"), "{error}");
        let plain = ["Content-Type: text/plain".to_string()];
        let error = RequestSpec::new("/v1/call/example/counter/{key}", "1", &plain).unwrap_err().to_string();
        assert!(error.contains("application/vnd."), "{error}");
    }

    #[test]
    fn a_quic_target_without_credentials_says_where_it_looked() {
        let missing = Path::new("/nonexistent/statefun-data");
        let credentials = Credentials { data_dir: missing, ca: None, token: None, server_name: "localhost" };
        let error = Target::parse("quic://127.0.0.1:8071", &credentials).unwrap().unwrap_err().to_string();
        assert!(error.contains("/nonexistent/statefun-data/tls/cert.pem"), "{error}");
        assert!(Target::parse("http://127.0.0.1:8070", &credentials).is_none());
    }
}
