//! Ingresses and egresses: the playground's, which the node runs, and Kafka's and
//! Kinesis's, which are checked field by field so that a module written for StateFun is
//! known to be right before the node says it cannot run them yet.

use std::collections::HashSet;

use serde_norway::Value;

use super::yaml::{duration_max, Fields, Node};
use super::{ModuleError, PlaygroundEgress, PlaygroundIngress};

const TARGETS_EXPECTED: &str = "a list of function types such as \"example/greeter\"";

/// Reads `io.statefun.playground.v1/ingress`.
pub(super) fn playground_ingress(spec: &Node<'_>) -> Result<PlaygroundIngress, ModuleError> {
    let fields = spec.fields(&["port"])?;
    let port = fields.require("port", "the port of the ingress's HTTP server")?.port()?;
    Ok(PlaygroundIngress { port })
}

/// Reads `io.statefun.playground.v1/egress`.
pub(super) fn playground_egress(spec: &Node<'_>) -> Result<PlaygroundEgress, ModuleError> {
    const TOPICS_EXPECTED: &str = "a list of topic names such as \"greetings\"";
    let fields = spec.fields(&["port", "topics"])?;
    let port = fields.require("port", "the port of the egress's HTTP server")?.port()?;
    let mut topics: Vec<String> = Vec::new();
    for node in fields.require("topics", TOPICS_EXPECTED)?.items(TOPICS_EXPECTED)? {
        let topic = node.text("a topic name such as \"greetings\"")?;
        // A topic is read back with `GET /{topic}`: one path segment.
        if topic.contains(['/', '?', '#', '%']) || topic.chars().any(char::is_whitespace) {
            return Err(node.error(format!(
                "expected a topic name without '/', '?', '#', '%' or spaces (it is a URL path segment), got {topic:?}"
            )));
        }
        if topics.contains(&topic) {
            return Err(node.error(format!("the topic {topic:?} is listed twice")));
        }
        topics.push(topic);
    }
    Ok(PlaygroundEgress { port, topics })
}

/// Checks `io.statefun.kafka.v1/ingress`. `id` is the legacy format's `meta.id`, which
/// takes the place of `spec.id`.
pub(super) fn kafka_ingress(spec: &Node<'_>, id: Option<&Node<'_>>) -> Result<(), ModuleError> {
    let fields = spec.fields(&known_with_id(
        id,
        &["address", "consumerGroupId", "topics", "startupPosition", "autoOffsetResetPosition", "properties"],
    ))?;
    component_id(&fields, id, "an ingress id")?;
    if let Some(node) = fields.get("address") {
        kafka_address(&node)?;
    }
    if let Some(node) = fields.get("consumerGroupId") {
        node.text("a consumer group id")?;
    }
    routes(&fields.require("topics", "a list of topics with their valueType and targets")?, "topic")?;
    if let Some(node) = fields.get("startupPosition") {
        let (kind, position) = typed(
            &node,
            "a startup position",
            &[
                ("group-offsets", &[]),
                ("earliest", &[]),
                ("latest", &[]),
                ("specific-offsets", &["offsets"]),
                ("date", &["date"]),
            ],
        )?;
        match kind.as_str() {
            "specific-offsets" => specific_offsets(&position)?,
            "date" => startup_date(&position)?,
            _ => {}
        }
    }
    if let Some(node) = fields.get("autoOffsetResetPosition") {
        const EXPECTED: &str = "an auto offset reset position, latest or earliest";
        let position = node.text(EXPECTED)?.to_ascii_lowercase();
        if position != "latest" && position != "earliest" {
            return Err(node.expected(EXPECTED));
        }
    }
    if let Some(node) = fields.get("properties") {
        properties(&node)?;
    }
    Ok(())
}

/// Checks `io.statefun.kafka.v1/egress`.
pub(super) fn kafka_egress(spec: &Node<'_>, id: Option<&Node<'_>>) -> Result<(), ModuleError> {
    let fields = spec.fields(&known_with_id(id, &["address", "deliverySemantic", "properties"]))?;
    component_id(&fields, id, "an egress id")?;
    if let Some(node) = fields.get("address") {
        kafka_address(&node)?;
    }
    if let Some(node) = fields.get("deliverySemantic") {
        let (kind, semantic) = typed(
            &node,
            "a delivery semantic",
            &[
                ("at-least-once", &[]),
                ("exactly-once", &["transactionTimeout", "transactionTimeoutMillis"]),
                ("none", &[]),
            ],
        )?;
        if kind == "exactly-once" {
            match (semantic.get("transactionTimeout"), semantic.get("transactionTimeoutMillis")) {
                (Some(timeout), None) => {
                    timeout.timeout()?;
                }
                (None, Some(millis)) => {
                    let millis_max = u64::try_from(duration_max.as_millis()).unwrap_or(u64::MAX);
                    millis.integer("a number of milliseconds", 1, millis_max)?;
                }
                (Some(_), Some(millis)) => {
                    return Err(millis.error("give transactionTimeout or transactionTimeoutMillis, not both"));
                }
                (None, None) => {
                    semantic
                        .require("transactionTimeout", "the transaction timeout of exactly-once, such as \"15min\"")?;
                }
            }
        }
    }
    if let Some(node) = fields.get("properties") {
        properties(&node)?;
    }
    Ok(())
}

/// Checks `io.statefun.kinesis.v1/ingress`.
pub(super) fn kinesis_ingress(spec: &Node<'_>, id: Option<&Node<'_>>) -> Result<(), ModuleError> {
    let fields = spec.fields(&known_with_id(
        id,
        &["awsRegion", "awsCredentials", "startupPosition", "streams", "clientConfigProperties"],
    ))?;
    component_id(&fields, id, "an ingress id")?;
    aws(&fields)?;
    if let Some(node) = fields.get("startupPosition") {
        let (kind, position) =
            typed(&node, "a startup position", &[("latest", &[]), ("earliest", &[]), ("date", &["date"])])?;
        if kind == "date" {
            startup_date(&position)?;
        }
    }
    routes(&fields.require("streams", "a list of streams with their valueType and targets")?, "stream")?;
    if let Some(node) = fields.get("clientConfigProperties") {
        properties(&node)?;
    }
    Ok(())
}

/// Checks `io.statefun.kinesis.v1/egress`.
pub(super) fn kinesis_egress(spec: &Node<'_>, id: Option<&Node<'_>>) -> Result<(), ModuleError> {
    let fields = spec.fields(&known_with_id(
        id,
        &["awsRegion", "awsCredentials", "maxOutstandingRecords", "clientConfigProperties"],
    ))?;
    component_id(&fields, id, "an egress id")?;
    aws(&fields)?;
    if let Some(node) = fields.get("maxOutstandingRecords") {
        node.integer("a number of records", 1, u64::from(u32::MAX))?;
    }
    if let Some(node) = fields.get("clientConfigProperties") {
        properties(&node)?;
    }
    Ok(())
}

/// The known fields, plus `id` unless the legacy format gave it in `meta.id`.
fn known_with_id<'k>(id: Option<&Node<'_>>, known: &[&'k str]) -> Vec<&'k str> {
    let mut all = Vec::with_capacity(known.len() + 1);
    if id.is_none() {
        all.push("id");
    }
    all.extend_from_slice(known);
    all
}

fn component_id(fields: &Fields<'_>, id: Option<&Node<'_>>, what: &str) -> Result<(), ModuleError> {
    let node = match id {
        Some(node) => node.clone(),
        None => fields.require("id", &format!("{what} such as \"example/names\""))?,
    };
    node.type_name(what)?;
    Ok(())
}

/// `host:port`, or several separated by commas.
fn kafka_address(node: &Node<'_>) -> Result<(), ModuleError> {
    const EXPECTED: &str = "a Kafka address such as \"kafka:9092\" or \"k1:9092,k2:9092\"";
    let text = node.text(EXPECTED)?;
    for broker in text.split(',').map(str::trim) {
        let valid = match broker.rsplit_once(':') {
            Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0),
            None => false,
        };
        if !valid {
            return Err(node.error(format!("expected {EXPECTED}, got {text:?}: {broker:?} is not host:port")));
        }
    }
    Ok(())
}

/// `[{topic|stream, valueType, targets: [...]}]`: where records go.
fn routes(node: &Node<'_>, name_field: &str) -> Result<(), ModuleError> {
    let expected = format!("a list of {name_field}s, each with {name_field}, valueType and targets");
    let items = node.items(&expected)?;
    if items.is_empty() {
        return Err(node.error(format!("expected at least one {name_field}")));
    }
    let mut names = HashSet::new();
    for item in items {
        let fields = item.fields(&[name_field, "valueType", "targets"])?;
        let name_node = fields.require(name_field, &format!("the {name_field}'s name"))?;
        let name = name_node.text(&format!("the {name_field}'s name"))?;
        if !names.insert(name.clone()) {
            return Err(name_node.error(format!("the {name_field} {name:?} is listed twice")));
        }
        fields
            .require("valueType", "the type of the values, such as \"example/MyMessage\"")?
            .type_name("a value type")?;
        let targets = fields.require("targets", TARGETS_EXPECTED)?;
        let target_nodes = targets.items(TARGETS_EXPECTED)?;
        if target_nodes.is_empty() {
            return Err(targets.error("expected at least one target function type"));
        }
        for target in target_nodes {
            let function = target.type_name("a function type")?;
            if function.name().contains('*') {
                return Err(target.error(format!(
                    "expected a function type such as \"example/greeter\", got the pattern {:?}; \
                     a target is one function type",
                    function.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// `offsets: [{"topic/partition": offset}]` of a `specific-offsets` startup position.
fn specific_offsets(position: &Fields<'_>) -> Result<(), ModuleError> {
    const EXPECTED: &str = "a list of offsets such as - \"names/0\": 42";
    let offsets = position.require("offsets", EXPECTED)?;
    let items = offsets.items(EXPECTED)?;
    if items.is_empty() {
        return Err(offsets.error("expected at least one offset"));
    }
    for item in items {
        let (key, value) = single_entry(&item, EXPECTED)?;
        let partition = key
            .rsplit_once('/')
            .and_then(|(topic, partition)| (!topic.is_empty()).then(|| partition.parse::<u32>().ok()).flatten());
        if partition.is_none() {
            return Err(value.error(format!("expected a key topic/partition such as \"names/0\", got {key:?}")));
        }
        value.integer("an offset", 0, i64::MAX.unsigned_abs())?;
    }
    Ok(())
}

/// `date:` of a `date` startup position, in StateFun's pattern `yyyy-MM-dd HH:mm:ss.SSS Z`.
fn startup_date(position: &Fields<'_>) -> Result<(), ModuleError> {
    const EXPECTED: &str = "a date such as \"2020-02-01 04:15:00.000 -0700\" (yyyy-MM-dd HH:mm:ss.SSS Z)";
    let node = position.require("date", EXPECTED)?;
    let text = node.text(EXPECTED)?;
    check_date(&text).map_err(|why| node.error(format!("expected {EXPECTED}, got {text:?}: {why}")))
}

/// Checks `yyyy-MM-dd HH:mm:ss.SSS Z`, as Java's `DateTimeFormatter` reads it: `Z` is an
/// offset such as `+0000` or `-0700`.
fn check_date(text: &str) -> Result<(), String> {
    const SHAPE: &[u8] = b"dddd-dd-dd dd:dd:dd.ddd sdddd";
    let bytes = text.as_bytes();
    let shaped = bytes.len() == SHAPE.len()
        && bytes.iter().zip(SHAPE).all(|(&byte, &shape)| match shape {
            b'd' => byte.is_ascii_digit(),
            b's' => byte == b'+' || byte == b'-',
            _ => byte == shape,
        });
    if !shaped {
        return Err("it does not have that shape".to_owned());
    }
    let number = |range: std::ops::Range<usize>| -> u32 {
        bytes[range].iter().fold(0, |number, digit| number * 10 + u32::from(digit - b'0'))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(format!("there is no month {month}")),
    };
    if day == 0 || day > days {
        return Err(format!("month {month} of {year} has no day {day}"));
    }
    if number(11..13) > 23 || number(14..16) > 59 || number(17..19) > 59 {
        return Err("the time of day is out of range".to_owned());
    }
    if number(25..27) > 18 || number(27..29) > 59 {
        return Err("the offset is out of range".to_owned());
    }
    Ok(())
}

/// `awsRegion` and `awsCredentials` of a Kinesis ingress or egress.
fn aws(fields: &Fields<'_>) -> Result<(), ModuleError> {
    if let Some(node) = fields.get("awsRegion") {
        let (kind, region) = typed(
            &node,
            "an AWS region",
            &[("default", &[]), ("specific", &["id"]), ("custom-endpoint", &["endpoint", "id"])],
        )?;
        if kind == "custom-endpoint" {
            region.require("endpoint", "the endpoint's URL")?.text("the endpoint's URL")?;
        }
        if kind != "default" {
            region.require("id", "a region id such as \"us-west-2\"")?.text("a region id")?;
        }
    }
    if let Some(node) = fields.get("awsCredentials") {
        let (kind, credentials) = typed(
            &node,
            "AWS credentials",
            &[
                ("default", &[]),
                ("basic", &["accessKeyId", "secretAccessKey"]),
                ("profile", &["profileName", "profilePath"]),
            ],
        )?;
        match kind.as_str() {
            "basic" => {
                credentials.require("accessKeyId", "an access key id")?.text("an access key id")?;
                credentials.require("secretAccessKey", "a secret access key")?.text("a secret access key")?;
            }
            "profile" => {
                credentials.require("profileName", "a profile name")?.text("a profile name")?;
                if let Some(path) = credentials.get("profilePath") {
                    path.text("the path of the profile file")?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `[{key: value}]`: Kafka or Kinesis client properties.
fn properties(node: &Node<'_>) -> Result<(), ModuleError> {
    const EXPECTED: &str = "a list of properties such as - foo.config: bar";
    let mut keys = HashSet::new();
    for item in node.items(EXPECTED)? {
        let (key, value) = single_entry(&item, EXPECTED)?;
        if !matches!(value.value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(value.expected("a text, a number or true/false"));
        }
        if !keys.insert(key.clone()) {
            return Err(value.error(format!("the property {key:?} is given twice")));
        }
    }
    Ok(())
}

/// The only entry of a one-entry mapping, as `- key: value` list items are.
fn single_entry<'a>(item: &Node<'a>, expected: &str) -> Result<(String, Node<'a>), ModuleError> {
    let Value::Mapping(map) = item.value else {
        return Err(item.expected(expected));
    };
    let mut entries = map.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(
            item.error(format!("expected one key: value per list item ({expected}), got {} of them", map.len()))
        );
    };
    let Value::String(key) = key else {
        return Err(item.error(format!("expected {expected}; the key is not a text")));
    };
    Ok((key.clone(), item.child(key, value)))
}

/// A `{type: ..., ...}` object: returns its type, among `types`, and its fields, checked
/// against the fields of that type.
fn typed<'a>(node: &Node<'a>, what: &str, types: &[(&str, &[&str])]) -> Result<(String, Fields<'a>), ModuleError> {
    let names: Vec<&str> = types.iter().map(|(name, _)| *name).collect();
    let expected = format!("{what} type, one of {}", names.join(", "));
    let mut all = vec!["type"];
    for (_, fields) in types {
        all.extend_from_slice(fields);
    }
    let fields = node.fields(&all)?;
    let type_node = fields.require("type", &expected)?;
    let kind = type_node.text(&expected)?;
    let Some((_, own)) = types.iter().find(|(name, _)| *name == kind) else {
        return Err(type_node.expected(&expected));
    };
    let mut known = vec!["type"];
    known.extend_from_slice(own);
    let fields = node.fields(&known).map_err(|mut error| {
        error.message.push_str(&format!(" (for type {kind:?})"));
        error
    })?;
    Ok((kind, fields))
}

#[cfg(test)]
mod tests {
    //! The date pattern of startup positions; the rest is tested through whole modules in
    //! the parent module's tests.

    use super::*;

    #[test]
    fn dates_follow_the_java_pattern() {
        assert_eq!(check_date("2020-02-01 04:15:00.000 -0700"), Ok(()));
        assert_eq!(check_date("2024-02-29 23:59:59.999 +0000"), Ok(()));
        assert!(check_date("2023-02-29 00:00:00.000 +0000").unwrap_err().contains("no day 29"));
        assert!(check_date("2020-13-01 00:00:00.000 +0000").unwrap_err().contains("no month 13"));
        assert!(check_date("2020-01-01 24:00:00.000 +0000").unwrap_err().contains("time of day"));
        assert!(check_date("2020-01-01 00:00:00.000 +1900").unwrap_err().contains("offset"));
        assert!(check_date("2020-01-01 00:00:00 +0000").unwrap_err().contains("shape"));
        assert!(check_date("2020-01-01T00:00:00.000Z").unwrap_err().contains("shape"));
    }
}
