//! StateFun's `module.yaml`: which functions live at which HTTP endpoints, and the
//! playground's ingress and egress.
//!
//! The format is StateFun 3.1's, a YAML stream of `kind:` + `spec:` documents; the 3.0
//! format (one document with `version: "3.0"`) is translated. Kafka and Kinesis documents
//! are checked field by field, then refused: the node does not run them yet. Every error
//! names the file, the document, its kind, the field and what was expected.

mod duration;
mod endpoint;
mod io;
mod legacy;
mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde_norway::Value;
use statefun_core::TypeName;

pub use duration::parse_duration;

use crate::limits::{module_documents_max, module_text_bytes_max};
use yaml::{describe, Doc, Node};

/// A parsed module: the endpoints of remote functions and the playground's I/O.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Module {
    /// The HTTP endpoints, in the order of the file. No two have the same pattern.
    pub endpoints: Vec<Endpoint>,
    /// The playground ingress (`io.statefun.playground.v1/ingress`), if any.
    pub playground_ingress: Option<PlaygroundIngress>,
    /// The playground egress (`io.statefun.playground.v1/egress`), if any.
    pub playground_egress: Option<PlaygroundEgress>,
}

/// Which functions an endpoint serves: `functions:` of an endpoint document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FunctionPattern {
    /// One function type, `namespace/name`.
    Exact(TypeName),
    /// Every function type of a namespace, written `namespace/*`.
    Namespace(String),
}

impl fmt::Display for FunctionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FunctionPattern::Exact(function) => write!(f, "{function}"),
            FunctionPattern::Namespace(namespace) => write!(f, "{namespace}/*"),
        }
    }
}

/// An HTTP endpoint serving remote functions (`io.statefun.endpoints.v2/http` or
/// `io.statefun.endpoints.v1/http`).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The functions served here.
    pub functions: FunctionPattern,
    /// Where requests go (`urlPathTemplate`).
    pub url: UrlTemplate,
    /// The most messages that may wait for one address while its request is in flight
    /// (`maxNumBatchRequests`, default 1000, at least 1). They go out as the next batch;
    /// past the bound, the address pushes back, as in StateFun.
    pub batch_max: u32,
    /// How requests are made.
    pub transport: Transport,
}

/// `urlPathTemplate`, split: `http(s)://host[:port]/path[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// `https`.
    pub tls: bool,
    /// The host name or address, without the brackets of an IPv6 address.
    pub host: String,
    /// The port; 80 or 443 when the URL has none.
    pub port: u16,
    /// Path and query, starting with `/` (`/` when the URL has no path); may hold
    /// `{function.name}`.
    pub path: String,
}

/// How an endpoint's requests are made (`transport`, or `timeouts` of v1 endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// The whole budget of one call, retries included (`call`): 2 min by default for v2
    /// endpoints, 1 min for v1.
    pub call: Duration,
    /// Budget to open a connection (`connect`): 20 s for v2, 10 s for v1.
    pub connect: Duration,
    /// How long an idle pooled connection is kept (`pool_ttl`, 15 s).
    pub pool_ttl: Duration,
    /// The most pooled connections (`pool_size`, 1024).
    pub pool_size: u32,
    /// The largest request or response body (`payload_max_bytes`, 32 MiB).
    pub payload_bytes_max: u64,
    /// Files for TLS; `None` when none is named.
    pub tls: Option<TlsFiles>,
}

/// The TLS files of a transport, as plain paths (`file:` removed). Relative paths are
/// relative to the working directory, as in StateFun.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust instead of the system's (`trust_cacerts`).
    pub trust_cacerts: Option<PathBuf>,
    /// Client certificate for mutual TLS (`client_cert`); given with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Client private key (`client_key`).
    pub client_key: Option<PathBuf>,
    /// A file holding the password of the client key (`client_key_password`).
    pub client_key_password: Option<PathBuf>,
}

/// The playground's HTTP ingress (`io.statefun.playground.v1/ingress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaygroundIngress {
    /// The port it listens on.
    pub port: u16,
}

/// The playground's HTTP egress (`io.statefun.playground.v1/egress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaygroundEgress {
    /// The port it listens on.
    pub port: u16,
    /// The topics it keeps records for, each at most once.
    pub topics: Vec<String>,
}

/// Why a module could not be read: where, and what was expected.
///
/// Displays as `module.yaml, document 1 (io.statefun.endpoints.v2/http),
/// spec.transport.call: expected ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", location(.document, .kind, .field))]
pub struct ModuleError {
    /// The file (or other source) of the module.
    pub file: String,
    /// The 1-based number of the YAML document, when the error is inside one.
    pub document: Option<u32>,
    /// The document's kind, when it is known.
    pub kind: Option<String>,
    /// The path of the field, such as `spec.transport.call`, when the error is about one.
    pub field: Option<String>,
    /// What is wrong: what was expected and what was found.
    pub message: String,
}

impl ModuleError {
    /// An error about the whole file.
    fn whole(file: &str, message: impl Into<String>) -> ModuleError {
        ModuleError { file: file.to_owned(), document: None, kind: None, field: None, message: message.into() }
    }
}

fn location(document: &Option<u32>, kind: &Option<String>, field: &Option<String>) -> String {
    let mut location = String::new();
    if let Some(document) = document {
        location.push_str(&format!(", document {document}"));
    }
    if let Some(kind) = kind {
        location.push_str(&format!(" ({kind})"));
    }
    if let Some(field) = field {
        location.push_str(&format!(", {field}"));
    }
    location
}

/// The kinds of component a module may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EndpointV2,
    EndpointV1,
    PlaygroundIngress,
    PlaygroundEgress,
    KafkaIngress,
    KafkaEgress,
    KinesisIngress,
    KinesisEgress,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::EndpointV2,
        Kind::EndpointV1,
        Kind::PlaygroundIngress,
        Kind::PlaygroundEgress,
        Kind::KafkaIngress,
        Kind::KafkaEgress,
        Kind::KinesisIngress,
        Kind::KinesisEgress,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::EndpointV2 => "io.statefun.endpoints.v2/http",
            Kind::EndpointV1 => "io.statefun.endpoints.v1/http",
            Kind::PlaygroundIngress => "io.statefun.playground.v1/ingress",
            Kind::PlaygroundEgress => "io.statefun.playground.v1/egress",
            Kind::KafkaIngress => "io.statefun.kafka.v1/ingress",
            Kind::KafkaEgress => "io.statefun.kafka.v1/egress",
            Kind::KinesisIngress => "io.statefun.kinesis.v1/ingress",
            Kind::KinesisEgress => "io.statefun.kinesis.v1/egress",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The sentence of a kind that is checked but not run yet.
    fn unsupported(self) -> Option<&'static str> {
        match self {
            Kind::KafkaIngress => {
                Some("Kafka ingress runs in a later version; remove the document or use the playground ingress")
            }
            Kind::KafkaEgress => {
                Some("Kafka egress runs in a later version; remove the document or use the playground egress")
            }
            Kind::KinesisIngress => {
                Some("Kinesis ingress runs in a later version; remove the document or use the playground ingress")
            }
            Kind::KinesisEgress => {
                Some("Kinesis egress runs in a later version; remove the document or use the playground egress")
            }
            _ => None,
        }
    }
}

/// One component: its kind, its spec and (legacy format only) its `meta.id`.
#[derive(Debug, Clone)]
struct Component<'a> {
    kind: Kind,
    spec: Node<'a>,
    id: Option<Node<'a>>,
}

impl Module {
    /// Reads and parses a module file; errors name the file as given.
    pub fn load(path: &Path) -> Result<Module, ModuleError> {
        let file = path.display().to_string();
        let error = |what: &str, cause: &dyn fmt::Display| ModuleError::whole(&file, format!("{what}: {cause}"));
        let handle = std::fs::File::open(path).map_err(|cause| error("cannot open the module", &cause))?;
        let mut bytes = Vec::new();
        // One byte past the bound tells a file that is too long.
        let read_max = u64::try_from(module_text_bytes_max).map_or(u64::MAX, |max| max + 1);
        handle.take(read_max).read_to_end(&mut bytes).map_err(|cause| error("cannot read the module", &cause))?;
        check_text_len(bytes.len(), &file)?;
        let text = String::from_utf8(bytes).map_err(|cause| error("the module is not UTF-8 text", &cause))?;
        Module::parse(&text, &file)
    }

    /// Parses the text of a module; `source` names it in errors (a file name).
    pub fn parse(text: &str, source: &str) -> Result<Module, ModuleError> {
        check_text_len(text.len(), source)?;
        let documents = read_documents(text, source)?;
        let components = components(&documents, source)?;
        assemble(components)
    }

    /// The endpoint serving `function`: the one bound to its exact type, else the one
    /// bound to its namespace, as in StateFun.
    pub fn endpoint_for(&self, function: &TypeName) -> Option<&Endpoint> {
        let exact = self.endpoints.iter().find(|endpoint| match &endpoint.functions {
            FunctionPattern::Exact(exact) => exact == function,
            FunctionPattern::Namespace(_) => false,
        });
        exact.or_else(|| {
            self.endpoints.iter().find(|endpoint| match &endpoint.functions {
                FunctionPattern::Exact(_) => false,
                FunctionPattern::Namespace(namespace) => namespace == function.namespace(),
            })
        })
    }
}

fn check_text_len(len: usize, file: &str) -> Result<(), ModuleError> {
    if len > module_text_bytes_max {
        return Err(ModuleError::whole(
            file,
            format!("the module is longer than the limit of {module_text_bytes_max} bytes; is it the right file?"),
        ));
    }
    Ok(())
}

/// Splits the YAML stream into documents, empty ones included (they keep the numbering).
fn read_documents(text: &str, file: &str) -> Result<Vec<Value>, ModuleError> {
    let mut documents = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        if index == module_documents_max {
            return Err(ModuleError::whole(
                file,
                format!("the module has more than {module_documents_max} YAML documents"),
            ));
        }
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let doc = Doc { file: file.to_owned(), number, kind: None, entry: None };
        // `singleton_map::deserialize` reads a plain `Value` exactly as `Value::deserialize`
        // would (it changes only how enums are read), without naming serde's trait.
        let mut value: Value = serde_norway::with::singleton_map::deserialize(document)
            .map_err(|cause| doc.error("", format!("not valid YAML: {cause}")))?;
        // `<<: *anchor` merges, so that one transport can be shared by several endpoints.
        value.apply_merge().map_err(|cause| doc.error("", format!("not valid YAML: {cause}")))?;
        if let Value::Tagged(tagged) = &value {
            return Err(doc.error("", format!("expected a document with kind and spec, got one tagged {}", tagged.tag)));
        }
        documents.push(value);
    }
    Ok(documents)
}

/// The components of the documents; empty documents are skipped.
fn components<'a>(documents: &'a [Value], file: &str) -> Result<Vec<Component<'a>>, ModuleError> {
    let present = documents.iter().filter(|value| !value.is_null()).count();
    let mut components = Vec::new();
    for (index, value) in documents.iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        if legacy::is_legacy(value) {
            if present > 1 {
                let doc = Doc { file: file.to_owned(), number, kind: None, entry: None };
                return Err(
                    doc.error("version", "a module in the format with version: must be the only document in its file")
                );
            }
            return legacy::components(file, number, value);
        }
        components.push(component(file, number, value)?);
    }
    Ok(components)
}

/// The component of one document of the stream.
fn component<'a>(file: &str, number: u32, value: &'a Value) -> Result<Component<'a>, ModuleError> {
    const KIND_EXPECTED: &str = "a kind such as io.statefun.endpoints.v2/http";
    let doc = Rc::new(Doc { file: file.to_owned(), number, kind: None, entry: None });
    if !matches!(value, Value::Mapping(_)) {
        return Err(doc.error("", format!("expected a mapping with kind and spec, got {}", describe(value))));
    }
    let fields = Node::new(&doc, "", value).fields(&["kind", "spec"])?;
    let kind_node = fields.require("kind", KIND_EXPECTED)?;
    let name = kind_node.text(KIND_EXPECTED)?;
    let Some(kind) = Kind::parse(&name) else {
        let names: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
        let mut message = format!("unknown kind {name:?}; the supported kinds are {}", names.join(", "));
        let renamed = [
            ("io.statefun.kafka/ingress", Kind::KafkaIngress),
            ("io.statefun.kafka/egress", Kind::KafkaEgress),
            ("io.statefun.kinesis/ingress", Kind::KinesisIngress),
            ("io.statefun.kinesis/egress", Kind::KinesisEgress),
        ];
        if let Some((_, kind)) = renamed.iter().find(|(old, _)| *old == name) {
            message.push_str(&format!(" ({name} is the version 3.0 name of {})", kind.name()));
        }
        return Err(kind_node.error(message));
    };
    let doc = Rc::new(Doc { file: file.to_owned(), number, kind: Some(kind.name().to_owned()), entry: None });
    let spec = value.get("spec").filter(|spec| !spec.is_null());
    let Some(spec) = spec else {
        return Err(doc.error("spec", "missing; expected the component's fields"));
    };
    Ok(Component { kind, spec: Node::new(&doc, "spec", spec), id: None })
}

/// Reads every component into the module. Errors in the fields come first; a kind the
/// node cannot run yet fails the module only once all the rest is known to be right.
fn assemble(components: Vec<Component<'_>>) -> Result<Module, ModuleError> {
    let mut module = Module::default();
    let mut bound: HashMap<FunctionPattern, String> = HashMap::new();
    let mut ingress_place = String::new();
    let mut egress_place = String::new();
    let mut unsupported: Option<ModuleError> = None;
    for component in components {
        let spec = &component.spec;
        let doc = &spec.doc;
        match component.kind {
            Kind::EndpointV2 | Kind::EndpointV1 => {
                let version =
                    if component.kind == Kind::EndpointV2 { endpoint::Version::V2 } else { endpoint::Version::V1 };
                let endpoint = endpoint::endpoint(spec, version)?;
                if let Some(first) = bound.get(&endpoint.functions) {
                    return Err(doc.error(
                        &format!("{}.functions", spec.path),
                        format!(
                            "{} is bound already by {first}; each function type or namespace has one endpoint",
                            endpoint.functions
                        ),
                    ));
                }
                bound.insert(endpoint.functions.clone(), doc.place());
                module.endpoints.push(endpoint);
            }
            Kind::PlaygroundIngress => {
                if module.playground_ingress.is_some() {
                    return Err(doc.error("", format!("a second playground ingress; {ingress_place} has one")));
                }
                let ingress = io::playground_ingress(spec)?;
                if let Some(egress) = &module.playground_egress {
                    check_ports_differ(spec, ingress.port, egress.port, &egress_place)?;
                }
                module.playground_ingress = Some(ingress);
                ingress_place = doc.place();
            }
            Kind::PlaygroundEgress => {
                if module.playground_egress.is_some() {
                    return Err(doc.error("", format!("a second playground egress; {egress_place} has one")));
                }
                let egress = io::playground_egress(spec)?;
                if let Some(ingress) = &module.playground_ingress {
                    check_ports_differ(spec, egress.port, ingress.port, &ingress_place)?;
                }
                module.playground_egress = Some(egress);
                egress_place = doc.place();
            }
            Kind::KafkaIngress => io::kafka_ingress(spec, component.id.as_ref())?,
            Kind::KafkaEgress => io::kafka_egress(spec, component.id.as_ref())?,
            Kind::KinesisIngress => io::kinesis_ingress(spec, component.id.as_ref())?,
            Kind::KinesisEgress => io::kinesis_egress(spec, component.id.as_ref())?,
        }
        if let (Some(sentence), None) = (component.kind.unsupported(), &unsupported) {
            unsupported = Some(doc.error("", format!("not supported yet: {sentence}")));
        }
    }
    match unsupported {
        Some(error) => Err(error),
        None => Ok(module),
    }
}

fn check_ports_differ(spec: &Node<'_>, port: u16, other_port: u16, other_place: &str) -> Result<(), ModuleError> {
    if port == other_port {
        return Err(spec.doc.error(
            &format!("{}.port", spec.path),
            format!(
                "the port {port} is taken by the playground's other server ({other_place}); give each its own port"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Whole modules, as users write them, through `Module::parse`: the playground and
    //! showcase examples, the 3.0 format, every transport field, and one test per class of
    //! error checking that the message names the document, the field and the expectation.

    use super::*;

    fn parse(text: &str) -> Result<Module, ModuleError> {
        Module::parse(text, "module.yaml")
    }

    fn error(text: &str) -> ModuleError {
        match parse(text) {
            Ok(module) => panic!("expected an error, got {module:?}"),
            Err(error) => error,
        }
    }

    /// Asserts where an error is and that its message contains `expected`.
    fn assert_error(error: &ModuleError, document: u32, kind: &str, field: &str, expected: &str) {
        assert_eq!(error.file, "module.yaml", "{error}");
        assert_eq!(error.document, Some(document), "{error}");
        assert_eq!(error.kind.as_deref(), (!kind.is_empty()).then_some(kind), "{error}");
        assert_eq!(error.field.as_deref(), (!field.is_empty()).then_some(field), "{error}");
        assert!(error.message.contains(expected), "{error}\nshould contain: {expected}");
    }

    fn v2(spec: &str) -> String {
        format!("kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/*\n{spec}")
    }

    const PLAYGROUND_GREETER: &str = "\
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://functions:8000/statefun
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.playground.v1/ingress
spec:
  port: 8090
---
kind: io.statefun.playground.v1/egress
spec:
  port: 8091
  topics:
    - greetings
";

    const SHOWCASE: &str = "\
kind: io.statefun.endpoints.v2/http
spec:
  functions: showcase.fns/*
  urlPathTemplate: http://host-machine:8000/statefun
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: showcase.io/names
  address: kafka:9092
  consumerGroupId: my-group-id
  startupPosition:
    type: earliest
  topics:
    - topic: logins
      valueType: showcase.types/userlogin
      targets:
        - showcase.fns/user
---
kind: io.statefun.kafka.v1/egress
spec:
  id: showcase.io/greets
  address: kafka:9092
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
";

    #[test]
    fn the_playground_greeter_module_parses() {
        let module = parse(PLAYGROUND_GREETER).unwrap();
        let expected = Module {
            endpoints: vec![Endpoint {
                functions: FunctionPattern::Namespace("example".into()),
                url: UrlTemplate { tls: false, host: "functions".into(), port: 8000, path: "/statefun".into() },
                batch_max: 1000,
                transport: Transport::async_default(),
            }],
            playground_ingress: Some(PlaygroundIngress { port: 8090 }),
            playground_egress: Some(PlaygroundEgress { port: 8091, topics: vec!["greetings".into()] }),
        };
        assert_eq!(module, expected);
        let transport = &module.endpoints[0].transport;
        assert_eq!((transport.call, transport.connect), (Duration::from_secs(120), Duration::from_secs(20)));
        assert_eq!((transport.pool_ttl, transport.pool_size), (Duration::from_secs(15), 1024));
        assert_eq!(transport.payload_bytes_max, 33_554_432);
        let greeter = TypeName::parse("example/greeter").unwrap();
        assert_eq!(module.endpoint_for(&greeter), Some(&module.endpoints[0]));
        assert_eq!(module.endpoint_for(&TypeName::parse("other/greeter").unwrap()), None);
    }

    #[test]
    fn the_showcase_is_checked_then_refused_for_its_kafka_documents() {
        let error = error(SHOWCASE);
        assert_eq!(
            error.to_string(),
            "module.yaml, document 2 (io.statefun.kafka.v1/ingress): not supported yet: Kafka ingress runs in a \
             later version; remove the document or use the playground ingress"
        );
    }

    #[test]
    fn errors_in_fields_come_before_not_supported() {
        let typo = SHOWCASE.replace("type: exactly-once", "type: exactly_once");
        let error = error(&typo);
        assert_error(
            &error,
            3,
            "io.statefun.kafka.v1/egress",
            "spec.deliverySemantic.type",
            "expected a delivery semantic type, one of at-least-once, exactly-once, none, got \"exactly_once\"",
        );
        let egress_only = SHOWCASE.split("---\n").nth(2).unwrap();
        assert_error(
            &super::tests::error(egress_only),
            1,
            "io.statefun.kafka.v1/egress",
            "",
            "not supported yet: Kafka egress runs in a later version; remove the document or use the playground egress",
        );
    }

    #[test]
    fn every_kafka_and_kinesis_field_is_checked() {
        let kafka_ingress = "\
kind: io.statefun.kafka.v1/ingress
spec:
  id: com.foo.bar/test-ingress
  address: kafka-broker:9092,other:9093
  consumerGroupId: my-group-id
  topics:
    - topic: topic-1
      valueType: com.googleapis/com.mycomp.foo.MessageA
      targets:
        - com.mycomp.foo/function-1
        - com.mycomp.foo/function-2
    - topic: topic-2
      valueType: com.googleapis/com.mycomp.foo.MessageB
      targets:
        - com.mycomp.foo/function-2
  autoOffsetResetPosition: EARLIEST
  startupPosition:
    type: specific-offsets
    offsets:
      - topic-1/0: 42
      - topic-1/1: 0
  properties:
    - foo.config: bar
    - enable.idempotence: true
";
        let kafka_by_date = "\
kind: io.statefun.kafka.v1/ingress
spec:
  id: a/b
  topics: [{topic: t, valueType: a/v, targets: [a/f]}]
  startupPosition: {type: date, date: 2020-02-01 04:15:00.000 -0700}
";
        let kafka_egress = "\
kind: io.statefun.kafka.v1/egress
spec:
  id: com.foo.bar/test-egress
  deliverySemantic:
    type: exactly-once
    transactionTimeoutMillis: 100000
  properties:
    - foo.config: bar
";
        let kinesis_ingress = "\
kind: io.statefun.kinesis.v1/ingress
spec:
  id: com.foo.bar/test-ingress
  awsRegion:
    type: specific
    id: us-west-2
  awsCredentials:
    type: basic
    accessKeyId: my_access_key_id
    secretAccessKey: my_secret_access_key
  startupPosition:
    type: date
    date: 2020-02-01 04:15:00.000 +0000
  streams:
    - stream: stream-1
      valueType: com.googleapis/com.mycomp.foo.MessageA
      targets:
        - com.mycomp.foo/function-1
  clientConfigProperties:
    - SocketTimeout: 9999
";
        let kinesis_egress = "\
kind: io.statefun.kinesis.v1/egress
spec:
  id: com.foo.bar/test-egress
  awsRegion:
    type: custom-endpoint
    endpoint: https://localhost:4567
    id: us-west-1
  awsCredentials:
    type: profile
    profileName: john-doe
    profilePath: /path/to/profile/config
  maxOutstandingRecords: 9999
  clientConfigProperties:
    - ThreadingModel: POOLED
";
        for (text, kind) in [
            (kafka_ingress, "Kafka ingress"),
            (kafka_by_date, "Kafka ingress"),
            (kafka_egress, "Kafka egress"),
            (kinesis_ingress, "Kinesis ingress"),
            (kinesis_egress, "Kinesis egress"),
        ] {
            let error = error(text);
            assert_eq!(error.field, None, "{error}");
            assert!(error.message.starts_with(&format!("not supported yet: {kind} runs")), "{error}");
        }

        let cases = [
            (kafka_ingress.replace("other:9093", "other"), "spec.address", "\"other\" is not host:port"),
            (
                kafka_ingress.replace("topic-1/1", "topic-1"),
                "spec.startupPosition.offsets[1].topic-1",
                "topic/partition",
            ),
            (kafka_ingress.replace("- topic: topic-2", "- topic: topic-1"), "spec.topics[1].topic", "listed twice"),
            (
                kafka_ingress.replace("com.mycomp.foo/function-1", "com.mycomp.foo/*"),
                "spec.topics[0].targets[0]",
                "a target is one function type",
            ),
            (kafka_ingress.replace("EARLIEST", "newest"), "spec.autoOffsetResetPosition", "latest or earliest"),
            (kafka_ingress.replace("consumerGroupId", "groupId"), "spec.groupId", "unknown field \"groupId\""),
            (
                kafka_ingress.replace("    - foo.config: bar\n", "    - foo.config: [bar]\n"),
                "spec.properties[0].foo.config",
                "expected a text, a number or true/false",
            ),
            (
                kafka_ingress.replace("  id: com.foo.bar/test-ingress\n", ""),
                "spec.id",
                "missing; expected an ingress id",
            ),
            (kafka_by_date.replace("2020-02-01", "2020-02-30"), "spec.startupPosition.date", "no day 30"),
            (
                kafka_by_date.replace("type: date,", "type: latest,"),
                "spec.startupPosition.date",
                "unknown field \"date\"",
            ),
            (
                kafka_egress.replace("    transactionTimeoutMillis: 100000\n", ""),
                "spec.deliverySemantic.transactionTimeout",
                "missing",
            ),
            (
                kafka_egress.replace("type: exactly-once\n", "type: exactly-once\n    transactionTimeout: 1min\n"),
                "spec.deliverySemantic.transactionTimeoutMillis",
                "not both",
            ),
            (
                kinesis_ingress.replace("type: basic", "type: session"),
                "spec.awsCredentials.type",
                "one of default, basic, profile",
            ),
            (kinesis_ingress.replace("    id: us-west-2\n", ""), "spec.awsRegion.id", "missing"),
            (kinesis_egress.replace("9999", "0"), "spec.maxOutstandingRecords", "from 1 to"),
        ];
        for (text, field, expected) in cases {
            let error = error(&text);
            assert_eq!(error.field.as_deref(), Some(field), "{error}");
            assert!(error.message.contains(expected), "{error}\nshould contain: {expected}");
        }
    }

    const LEGACY: &str = r#"
version: "3.0"
module:
  meta:
    type: remote
  spec:
    endpoints:
      - endpoint:
          meta:
            kind: http
          spec:
            functions: com.foo.bar/*
            urlPathTemplate: http://bar.foo.com:8080/functions/{function.name}
            timeouts:
              call: 1minutes
              connect: 10seconds
              read: 10second
              write: 10seconds
            maxNumBatchRequests: 10000
      - endpoint:
          meta:
            kind: io.statefun.endpoints.v2/http
          spec:
            functions: com.foo.baz/greeter
            urlPathTemplate: https://baz:8443/
"#;

    #[test]
    fn a_legacy_3_0_module_is_translated() {
        let module = parse(LEGACY).unwrap();
        assert_eq!(module.endpoints.len(), 2);
        let first = &module.endpoints[0];
        assert_eq!(first.functions, FunctionPattern::Namespace("com.foo.bar".into()));
        assert_eq!(first.batch_max, 10_000);
        assert_eq!((first.transport.call, first.transport.connect), (Duration::from_secs(60), Duration::from_secs(10)));
        let function = TypeName::parse("com.foo.bar/greeter").unwrap();
        assert_eq!(first.url.path_for(&function), "/functions/greeter");
        assert_eq!(first.url.authority(), "bar.foo.com:8080");
        let second = &module.endpoints[1];
        assert_eq!(second.functions, FunctionPattern::Exact(TypeName::parse("com.foo.baz/greeter").unwrap()));
        assert_eq!(second.transport, Transport::async_default());
        assert_eq!(parse(&LEGACY.replace("\"3.0\"", "3.0")).unwrap(), module);
    }

    #[test]
    fn legacy_ingresses_and_egresses_are_checked_then_refused() {
        let with_io = format!(
            "{LEGACY}    ingresses:
      - ingress:
          meta:
            type: io.statefun.kafka/ingress
            id: com.mycomp.igal/names
          spec:
            address: kafka-broker:9092
            topics:
              - topic: names
                valueType: com.mycomp/Name
                targets: [com.foo.bar/greeter]
    egresses:
      - egress:
          meta:
            type: io.statefun.kafka/egress
            id: com.mycomp.foo/bar
          spec:
            address: kafka-broker:9092
            deliverySemantic:
              type: exactly-once
              transactionTimeoutMillis: 100000
            properties:
              - foo.config: bar
"
        );
        assert_error(&error(&with_io), 1, "io.statefun.kafka.v1/ingress", "", "not supported yet: Kafka ingress");

        let bad_id = with_io.replace("id: com.mycomp.igal/names", "id: names");
        let field = "module.spec.ingresses[0].ingress.meta.id";
        assert_error(&error(&bad_id), 1, "io.statefun.kafka.v1/ingress", field, "expected an ingress id");

        let bad_field = with_io.replace("transactionTimeoutMillis: 100000", "transactionTimeoutMillis: soon");
        let field = "module.spec.egresses[0].egress.spec.deliverySemantic.transactionTimeoutMillis";
        assert_error(&error(&bad_field), 1, "io.statefun.kafka.v1/egress", field, "expected a number of milliseconds");

        let protobuf = with_io.replace("io.statefun.kafka/ingress", "statefun.kafka.io/protobuf-ingress");
        let field = "module.spec.ingresses[0].ingress.meta.type";
        assert_error(&error(&protobuf), 1, "", field, "one of io.statefun.kafka/ingress, io.statefun.kinesis/ingress");
    }

    #[test]
    fn old_format_versions_say_what_to_use() {
        for version in ["\"1.0\"", "2.0"] {
            let text = LEGACY.replace("\"3.0\"", version);
            assert_error(&error(&text), 1, "", "version", "was removed in StateFun 3.0");
        }
        assert_error(&error(&LEGACY.replace("\"3.0\"", "\"4.0\"")), 1, "", "version", "unknown format version \"4.0\"");
        let two = format!("{PLAYGROUND_GREETER}---\n{LEGACY}");
        assert_error(&error(&two), 4, "", "version", "must be the only document");
        let bad_type = LEGACY.replace("type: remote", "type: embedded");
        assert_error(&error(&bad_type), 1, "", "module.meta.type", "expected the module type remote, got \"embedded\"");
    }

    #[test]
    fn every_duration_form_is_read() {
        let cases = [
            ("500", Duration::from_millis(500)),
            ("\"500\"", Duration::from_millis(500)),
            ("10ns", Duration::from_nanos(10)),
            ("10 nanos", Duration::from_nanos(10)),
            ("10 nanoseconds", Duration::from_nanos(10)),
            ("10µs", Duration::from_micros(10)),
            ("10us", Duration::from_micros(10)),
            ("10 micro", Duration::from_micros(10)),
            ("10 microseconds", Duration::from_micros(10)),
            ("10ms", Duration::from_millis(10)),
            ("10 milli", Duration::from_millis(10)),
            ("10 milliseconds", Duration::from_millis(10)),
            ("10s", Duration::from_secs(10)),
            ("10sec", Duration::from_secs(10)),
            ("10 secs", Duration::from_secs(10)),
            ("10 second", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("2 min", Duration::from_secs(120)),
            ("2 mins", Duration::from_secs(120)),
            ("2minutes", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3_600)),
            ("1 hours", Duration::from_secs(3_600)),
            ("1d", Duration::from_secs(86_400)),
            ("1day", Duration::from_secs(86_400)),
            ("2 days", Duration::from_secs(172_800)),
        ];
        for (text, expected) in cases {
            let module =
                parse(&v2(&format!("  urlPathTemplate: http://f/\n  transport:\n    call: {text}\n"))).unwrap();
            assert_eq!(module.endpoints[0].transport.call, expected, "{text}");
        }
    }

    #[test]
    fn a_v1_endpoint_reads_its_timeouts() {
        let text = "\
kind: io.statefun.endpoints.v1/http
spec:
  functions: com.foo.bar/greeter
  urlPathTemplate: http://bar.foo.com:8080/functions/{function.name}
  maxNumBatchRequests: 10
  timeouts:
    call: 2 min
    connect: 30seconds
    read: 20seconds
    write: 10seconds
";
        let endpoint = parse(text).unwrap().endpoints.remove(0);
        assert_eq!(endpoint.batch_max, 10);
        assert_eq!(
            (endpoint.transport.call, endpoint.transport.connect),
            (Duration::from_secs(120), Duration::from_secs(30))
        );
        assert_eq!(endpoint.transport.pool_size, 1024);

        let without_timeouts = text.split("  timeouts:").next().unwrap();
        let defaults = parse(without_timeouts).unwrap().endpoints.remove(0).transport;
        assert_eq!((defaults.call, defaults.connect), (Duration::from_secs(60), Duration::from_secs(10)));

        let kind = "io.statefun.endpoints.v1/http";
        let long_read = text.replace("read: 20seconds", "read: 3min");
        assert_error(
            &error(&long_read),
            1,
            kind,
            "spec.timeouts.read",
            "no longer than the call timeout (120s), got 180s",
        );
        let zero = text.replace("write: 10seconds", "write: 0");
        assert_error(&error(&zero), 1, kind, "spec.timeouts.write", "expected a timeout longer than zero, got 0");
        let transport = text.replace("  timeouts:", "  transport:");
        assert_error(&error(&transport), 1, kind, "spec.transport", "unknown field \"transport\"");
    }

    #[test]
    fn every_transport_field_is_read() {
        let text = v2("  urlPathTemplate: http://f:1108/\n  maxNumBatchRequests: 64\n  transport:
    call: 30s
    connect: 5s
    pool_ttl: 1min
    pool_size: 8
    payload_max_bytes: 1048576
");
        let endpoint = parse(&text).unwrap().endpoints.remove(0);
        assert_eq!(endpoint.batch_max, 64);
        let expected = Transport {
            call: Duration::from_secs(30),
            connect: Duration::from_secs(5),
            pool_ttl: Duration::from_secs(60),
            pool_size: 8,
            payload_bytes_max: 1_048_576,
            tls: None,
        };
        assert_eq!(endpoint.transport, expected);

        let nested = v2("  urlPathTemplate: http://f/\n  transport:\n    timeouts: {connect: 3s, read: 5s}\n");
        let transport = parse(&nested).unwrap().endpoints.remove(0).transport;
        assert_eq!((transport.call, transport.connect), (Duration::from_secs(60), Duration::from_secs(3)));

        let okhttp = v2("  urlPathTemplate: http://f/\n  transport:\n    type: io.statefun.transports.v1/okhttp\n");
        let transport = parse(&okhttp).unwrap().endpoints.remove(0).transport;
        assert_eq!((transport.call, transport.connect), (Duration::from_secs(60), Duration::from_secs(10)));

        let kind = "io.statefun.endpoints.v2/http";
        let twice = v2("  urlPathTemplate: http://f/\n  transport:\n    call: 1s\n    timeouts: {call: 2s}\n");
        assert_error(&error(&twice), 1, kind, "spec.transport.timeouts.call", "given twice");
        let bad_type = v2("  urlPathTemplate: http://f/\n  transport:\n    type: io.statefun.transports.v1/grpc\n");
        assert_error(&error(&bad_type), 1, kind, "spec.transport.type", "io.statefun.transports.v1/async or");
        let pool = v2("  urlPathTemplate: http://f/\n  transport:\n    pool_size: 0\n");
        assert_error(&error(&pool), 1, kind, "spec.transport.pool_size", "from 1 to 4294967295, got 0");
    }

    #[test]
    fn tls_files_are_read_as_paths() {
        let text = v2("  urlPathTemplate: https://remote-function-host:8000
  transport:
    type: io.statefun.transports.v1/async
    trust_cacerts: file:/opt/certs/a_ca.pem
    client_cert: file:///opt/certs/a_client.crt
    client_key: /opt/certs/a_client.key.p8
    client_key_password: certs/key_password.txt
");
        let endpoint = parse(&text).unwrap().endpoints.remove(0);
        assert_eq!(endpoint.url.path, "/");
        assert_eq!(endpoint.url.authority(), "remote-function-host:8000");
        let expected = TlsFiles {
            trust_cacerts: Some("/opt/certs/a_ca.pem".into()),
            client_cert: Some("/opt/certs/a_client.crt".into()),
            client_key: Some("/opt/certs/a_client.key.p8".into()),
            client_key_password: Some("certs/key_password.txt".into()),
        };
        assert_eq!(endpoint.transport.tls, Some(expected));

        let kind = "io.statefun.endpoints.v2/http";
        let classpath = text.replace("file:/opt/certs/a_ca.pem", "classpath:a_ca.pem");
        assert_error(
            &error(&classpath),
            1,
            kind,
            "spec.transport.trust_cacerts",
            "no Java classpath here; give a file path",
        );
        let plain = text.replace("https://", "http://");
        assert_error(&error(&plain), 1, kind, "spec.urlPathTemplate", "use https:// or remove the TLS files");
        let no_key = text.replace("    client_key: /opt/certs/a_client.key.p8\n", "");
        assert_error(&error(&no_key), 1, kind, "spec.transport.client_cert", "client_key is missing");
    }

    #[test]
    fn yaml_syntax_errors_name_the_document() {
        let text = format!("{PLAYGROUND_GREETER}---\nkind: [oops\n");
        assert_error(&error(&text), 4, "", "", "not valid YAML");
        assert_error(&error("a: 1\na: 2\n"), 1, "", "", "duplicate entry with key \"a\"");
    }

    #[test]
    fn documents_must_be_kind_and_spec() {
        assert_error(&error("- a\n- b\n"), 1, "", "", "expected a mapping with kind and spec, got a list");
        assert_error(&error("spec: {}\n"), 1, "", "kind", "missing; expected a kind such as");
        assert_error(
            &error("kind: io.statefun.endpoints.v2/http\n"),
            1,
            "io.statefun.endpoints.v2/http",
            "spec",
            "missing",
        );
        assert_error(
            &error("kind: io.statefun.endpoints.v2/http\nspec: {}\nmeta: {}\n"),
            1,
            "",
            "meta",
            "the known fields are kind, spec",
        );
    }

    #[test]
    fn unknown_kinds_list_the_supported_ones() {
        let error = error("kind: com.foo.bar/test.component.1\nspec:\n  foo: bar\n");
        assert_error(&error, 1, "", "kind", "unknown kind \"com.foo.bar/test.component.1\"; the supported kinds are");
        for kind in Kind::ALL {
            assert!(error.message.contains(kind.name()), "{error}");
        }
        let renamed = super::tests::error("kind: io.statefun.kafka/ingress\nspec: {}\n");
        assert!(renamed.message.contains("the version 3.0 name of io.statefun.kafka.v1/ingress"), "{renamed}");
    }

    #[test]
    fn unknown_spec_fields_are_named() {
        let text = v2("  urlPathTemplate: http://f/\n  maxNumBatchRequest: 10\n");
        let error = error(&text);
        assert_error(
            &error,
            1,
            "io.statefun.endpoints.v2/http",
            "spec.maxNumBatchRequest",
            "did you mean \"maxNumBatchRequests\"?",
        );
        assert!(error.message.contains("functions, urlPathTemplate, maxNumBatchRequests, transport"), "{error}");
    }

    #[test]
    fn bad_durations_say_what_a_duration_is() {
        let text = v2("  urlPathTemplate: http://f/\n  transport:\n    call: two minutes\n");
        let error = error(&text);
        assert!(
            error.to_string().starts_with(
                "module.yaml, document 1 (io.statefun.endpoints.v2/http), spec.transport.call: expected a duration \
                 such as \"2 min\", \"10s\" or 500 (milliseconds), got \"two minutes\""
            ),
            "{error}"
        );
        let zero = v2("  urlPathTemplate: http://f/\n  transport:\n    connect: 0ms\n");
        assert_error(
            &super::tests::error(&zero),
            1,
            "io.statefun.endpoints.v2/http",
            "spec.transport.connect",
            "longer than zero",
        );
    }

    #[test]
    fn bad_endpoint_fields_say_what_was_expected() {
        let kind = "io.statefun.endpoints.v2/http";
        let missing_url = v2("");
        assert_error(
            &error(&missing_url),
            1,
            kind,
            "spec.urlPathTemplate",
            "missing; expected an http:// or https:// URL",
        );
        let scheme = v2("  urlPathTemplate: ftp://f/\n");
        assert_error(&error(&scheme), 1, kind, "spec.urlPathTemplate", "the scheme \"ftp\" is not supported");
        let functions =
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/gr*\n  urlPathTemplate: http://f/\n";
        assert_error(&error(functions), 1, kind, "spec.functions", "'*' stands only for the whole name");
        let no_namespace = functions.replace("example/gr*", "greeter");
        assert_error(
            &error(&no_namespace),
            1,
            kind,
            "spec.functions",
            "expected a function type such as \"example/greeter\"",
        );
        let batch = v2("  urlPathTemplate: http://f/\n  maxNumBatchRequests: 0\n");
        assert_error(&error(&batch), 1, kind, "spec.maxNumBatchRequests", "expected a number of requests from 1 to");
    }

    #[test]
    fn exact_and_namespace_bindings_coexist_but_duplicates_do_not() {
        let exact =
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/greeter\n  urlPathTemplate: http://g/\n";
        let text = format!("{PLAYGROUND_GREETER}---\n{exact}");
        let module = parse(&text).unwrap();
        let greeter = TypeName::parse("example/greeter").unwrap();
        assert_eq!(module.endpoint_for(&greeter).unwrap().url.host, "g");
        assert_eq!(module.endpoint_for(&TypeName::parse("example/other").unwrap()).unwrap().url.host, "functions");

        let twice = format!("{text}---\n{exact}");
        assert_error(
            &error(&twice),
            5,
            "io.statefun.endpoints.v2/http",
            "spec.functions",
            "example/greeter is bound already by document 4",
        );
    }

    #[test]
    fn playground_ingress_and_egress_are_checked() {
        let twice = format!("{PLAYGROUND_GREETER}---\nkind: io.statefun.playground.v1/ingress\nspec:\n  port: 9000\n");
        assert_error(
            &error(&twice),
            4,
            "io.statefun.playground.v1/ingress",
            "",
            "a second playground ingress; document 2 has one",
        );
        let port_zero = PLAYGROUND_GREETER.replace("8090", "0");
        assert_error(
            &error(&port_zero),
            2,
            "io.statefun.playground.v1/ingress",
            "spec.port",
            "expected a port from 1 to 65535, got 0",
        );
        let same_port = PLAYGROUND_GREETER.replace("8091", "8090");
        assert_error(
            &error(&same_port),
            3,
            "io.statefun.playground.v1/egress",
            "spec.port",
            "taken by the playground's other server (document 2)",
        );
        let bad_topic = PLAYGROUND_GREETER.replace("- greetings", "- greet/ings");
        assert_error(&error(&bad_topic), 3, "io.statefun.playground.v1/egress", "spec.topics[0]", "without '/'");
        let no_topics = PLAYGROUND_GREETER.replace("  topics:\n    - greetings\n", "");
        assert_error(&error(&no_topics), 3, "io.statefun.playground.v1/egress", "spec.topics", "missing");
    }

    #[test]
    fn empty_documents_are_skipped_but_counted() {
        let text = format!("---\n# nothing\n---\n{PLAYGROUND_GREETER}");
        assert_eq!(parse(&text).unwrap(), parse(PLAYGROUND_GREETER).unwrap());
        let broken = text.replace("8090", "zero");
        assert_error(&error(&broken), 3, "io.statefun.playground.v1/ingress", "spec.port", "expected a port");
        assert_eq!(parse("").unwrap(), Module::default());
    }

    #[test]
    fn bounds_are_enforced() {
        let long = format!("{PLAYGROUND_GREETER}#{}\n", "x".repeat(module_text_bytes_max));
        let error = error(&long);
        assert_eq!((error.document, error.field.as_deref()), (None, None));
        assert!(error.to_string().starts_with("module.yaml: the module is longer than the limit of 1048576 bytes"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, previous) in
            ["b", "c", "d", "e", "f", "g", "h", "i"].iter().zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            let aliases = vec![format!("*{previous}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{aliases}]\n"));
        }
        assert_error(&super::tests::error(&bomb), 1, "", "", "not valid YAML: repetition limit exceeded");
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_error(&super::tests::error(&deep), 1, "", "", "not valid YAML: recursion limit exceeded");
        let many = "---\n".repeat(module_documents_max + 1);
        assert!(super::tests::error(&many).message.contains("more than 1024 YAML documents"));
    }

    #[test]
    fn load_reads_a_file_and_names_it() {
        let path = std::env::temp_dir().join(format!("statefun-module-test-{}.yaml", std::process::id()));
        std::fs::write(&path, PLAYGROUND_GREETER).unwrap();
        let loaded = Module::load(&path);
        std::fs::write(&path, PLAYGROUND_GREETER.replace("8090", "0")).unwrap();
        let broken = Module::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), parse(PLAYGROUND_GREETER).unwrap());
        let error = broken.unwrap_err();
        assert_eq!(error.file, path.display().to_string());
        assert!(error.to_string().starts_with(&format!("{}, document 2", path.display())), "{error}");
        let missing = Module::load(Path::new("/nonexistent/module.yaml")).unwrap_err();
        assert!(missing.to_string().starts_with("/nonexistent/module.yaml: cannot open the module"), "{missing}");
    }
}
