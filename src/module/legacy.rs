//! The format before StateFun 3.1: one document with `version: "3.0"` and `module:`,
//! translated into the components of the document-stream format, as StateFun's
//! `LegacyRemoteModuleV30` does.
//!
//! ```yaml
//! version: "3.0"
//! module:
//!   meta:
//!     type: remote
//!   spec:
//!     endpoints:
//!       - endpoint:
//!           meta:
//!             kind: http                      # -> io.statefun.endpoints.v1/http
//!           spec: { functions: ..., urlPathTemplate: ... }
//!     ingresses:
//!       - ingress:
//!           meta:
//!             type: io.statefun.kafka/ingress # -> io.statefun.kafka.v1/ingress
//!             id: example/names               # -> the spec's id
//!           spec: { address: ..., topics: ... }
//!     egresses:
//!       - egress: { meta: { type: io.statefun.kafka/egress, id: ... }, spec: { ... } }
//! ```

use std::rc::Rc;

use serde_norway::Value;

use super::yaml::{Doc, Node};
use super::{Component, Kind, ModuleError};

/// The three lists of a legacy module and what each entry may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Endpoint,
    Ingress,
    Egress,
}

impl Role {
    /// The list's field in `module.spec`, and the key of each entry.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Role::Endpoint => ("endpoints", "endpoint"),
            Role::Ingress => ("ingresses", "ingress"),
            Role::Egress => ("egresses", "egress"),
        }
    }

    /// The kinds an entry may name, with the legacy names first.
    fn kinds(self) -> &'static [(&'static str, Kind)] {
        match self {
            Role::Endpoint => &[
                ("http", Kind::EndpointV1),
                ("io.statefun.endpoints.v1/http", Kind::EndpointV1),
                ("io.statefun.endpoints.v2/http", Kind::EndpointV2),
            ],
            Role::Ingress => &[
                ("io.statefun.kafka/ingress", Kind::KafkaIngress),
                ("io.statefun.kinesis/ingress", Kind::KinesisIngress),
                ("io.statefun.kafka.v1/ingress", Kind::KafkaIngress),
                ("io.statefun.kinesis.v1/ingress", Kind::KinesisIngress),
            ],
            Role::Egress => &[
                ("io.statefun.kafka/egress", Kind::KafkaEgress),
                ("io.statefun.kinesis/egress", Kind::KinesisEgress),
                ("io.statefun.kafka.v1/egress", Kind::KafkaEgress),
                ("io.statefun.kinesis.v1/egress", Kind::KinesisEgress),
            ],
        }
    }
}

/// Whether a document is in the legacy format: it has `version:` and no `kind:`.
pub(super) fn is_legacy(value: &Value) -> bool {
    value.get("version").is_some() && value.get("kind").is_none()
}

/// Translates the legacy document `number` into components.
pub(super) fn components<'a>(file: &str, number: u32, value: &'a Value) -> Result<Vec<Component<'a>>, ModuleError> {
    let doc = Rc::new(Doc { file: file.to_owned(), number, kind: None, entry: None });
    let root = Node::new(&doc, "", value).fields(&["version", "module"])?;
    check_version(&root.require("version", "the format version \"3.0\"")?)?;
    let module = root.require("module", "the module, with meta and spec")?.fields(&["meta", "spec"])?;
    let meta = module.require("meta", "the module's meta, with type: remote")?.fields(&["type"])?;
    let module_type = meta.require("type", "the module type remote")?;
    if !module_type.text("the module type remote")?.eq_ignore_ascii_case("remote") {
        return Err(module_type.expected("the module type remote"));
    }
    let spec = module.require("spec", "the module's spec, with endpoints, ingresses and egresses")?.fields(&[
        "endpoints",
        "ingresses",
        "egresses",
    ])?;
    let mut components = Vec::new();
    for role in [Role::Endpoint, Role::Ingress, Role::Egress] {
        let (list, key) = role.names();
        let Some(list) = spec.get(list) else { continue };
        for item in list.items(&format!("a list of - {key}: {{meta: ..., spec: ...}}"))? {
            components.push(entry(file, number, &item, role)?);
        }
    }
    Ok(components)
}

/// Accepts 3.0 and explains what became of the older versions.
fn check_version(node: &Node<'_>) -> Result<(), ModuleError> {
    let text = match node.value {
        Value::String(text) => text.trim().to_owned(),
        Value::Number(number) => number.to_string(),
        _ => return Err(node.expected("the format version \"3.0\"")),
    };
    match text.parse::<f64>() {
        Ok(3.0) => Ok(()),
        Ok(1.0 | 2.0) => Err(node.error(format!(
            "version {text} of the module format was removed in StateFun 3.0; write the module as \
             documents of kind: and spec: (io.statefun.endpoints.v2/http for the functions), or use \
             version \"3.0\""
        ))),
        _ => Err(node.error(format!(
            "unknown format version {text:?}; the supported are \"3.0\" and the stream of kind: and spec: \
             documents (without version:)"
        ))),
    }
}

/// One entry of a list: `- endpoint: {meta: {kind}, spec}` or `- ingress: {meta: {type,
/// id}, spec}`.
fn entry<'a>(file: &str, number: u32, item: &Node<'a>, role: Role) -> Result<Component<'a>, ModuleError> {
    let (_, key) = role.names();
    let expected = format!("the {key}, with meta and spec");
    let inner = item.fields(&[key])?.require(key, &expected)?.fields(&["meta", "spec"])?;
    let (kind_field, meta_fields): (&str, &[&str]) = match role {
        Role::Endpoint => ("kind", &["kind"]),
        Role::Ingress | Role::Egress => ("type", &["type", "id"]),
    };
    let meta = inner.require("meta", &format!("the {key}'s meta"))?.fields(meta_fields)?;
    let kinds = role.kinds();
    let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
    let kind_expected = format!("the {key}'s kind, one of {}", names.join(", "));
    let kind_node = meta.require(kind_field, &kind_expected)?;
    let kind_text = kind_node.text(&kind_expected)?;
    let Some(&(_, kind)) = kinds.iter().find(|(name, _)| *name == kind_text) else {
        return Err(kind_node.expected(&kind_expected));
    };
    let id = match role {
        Role::Endpoint => None,
        Role::Ingress | Role::Egress => Some(meta.require("id", &format!("the {key}'s id such as \"example/names\""))?),
    };
    let spec = inner.require("spec", &format!("the {key}'s spec"))?;
    // From here on, errors name the component's kind and entry.
    let doc = Rc::new(Doc {
        file: file.to_owned(),
        number,
        kind: Some(kind.name().to_owned()),
        entry: Some(item.path.clone()),
    });
    Ok(Component {
        kind,
        spec: Node::new(&doc, spec.path, spec.value),
        id: id.map(|id| Node::new(&doc, id.path, id.value)),
    })
}
