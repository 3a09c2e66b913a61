//! Reading YAML values with the path that led to them, so that every error names its field.

use std::rc::Rc;
use std::time::Duration;

use serde_norway::{Mapping, Value};
use statefun_core::TypeName;

use super::duration::parse_duration;
use super::ModuleError;

/// The longest duration a module may give: a year. Longer ones are typos, and adding them
/// to a clock reading could overflow.
#[allow(non_upper_case_globals)]
pub(super) const duration_max: Duration = Duration::from_secs(365 * 86_400);

/// The value of an absent field, for the errors that name it.
static NULL: Value = Value::Null;

/// The characters of a value quoted in an error; longer values are cut.
const QUOTED_CHARS_MAX: usize = 80;

/// Where a component was declared: names it in every error about it.
#[derive(Debug, Clone)]
pub(super) struct Doc {
    pub file: String,
    /// 1-based number of the YAML document in the stream.
    pub number: u32,
    /// The component's kind, once known.
    pub kind: Option<String>,
    /// For a component inside a legacy document, the path of its entry
    /// (`module.spec.endpoints[0]`).
    pub entry: Option<String>,
}

impl Doc {
    /// An error about this document, at `field` (empty: about the whole document).
    pub fn error(&self, field: &str, message: impl Into<String>) -> ModuleError {
        ModuleError {
            file: self.file.clone(),
            document: Some(self.number),
            kind: self.kind.clone(),
            field: (!field.is_empty()).then(|| field.to_owned()),
            message: message.into(),
        }
    }

    /// How another error refers to this component: `document 3`, or
    /// `document 1 at module.spec.endpoints[0]`.
    pub fn place(&self) -> String {
        match &self.entry {
            None => format!("document {}", self.number),
            Some(entry) => format!("document {} at {entry}", self.number),
        }
    }
}

/// A YAML value, the document it is in and the field path that leads to it.
#[derive(Debug, Clone)]
pub(super) struct Node<'a> {
    pub doc: Rc<Doc>,
    pub path: String,
    pub value: &'a Value,
}

impl<'a> Node<'a> {
    pub fn new(doc: &Rc<Doc>, path: impl Into<String>, value: &'a Value) -> Node<'a> {
        Node { doc: Rc::clone(doc), path: path.into(), value }
    }

    /// An error about this field.
    pub fn error(&self, message: impl Into<String>) -> ModuleError {
        self.doc.error(&self.path, message)
    }

    /// "expected {what}, got {this value}".
    pub fn expected(&self, what: &str) -> ModuleError {
        self.error(format!("expected {what}, got {}", describe(self.value)))
    }

    /// The node of `key` inside this one.
    pub fn child(&self, key: &str, value: &'a Value) -> Node<'a> {
        let path = if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) };
        Node { doc: Rc::clone(&self.doc), path, value }
    }

    /// A mapping whose keys are all among `known`. Nothing (`key:` with no value) reads as
    /// an empty mapping.
    pub fn fields(&self, known: &[&str]) -> Result<Fields<'a>, ModuleError> {
        static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        let map = match self.value {
            Value::Mapping(map) => map,
            Value::Null => EMPTY.get_or_init(Mapping::new),
            _ => return Err(self.expected("a mapping of fields")),
        };
        for key in map.keys() {
            let Value::String(name) = key else {
                return Err(self.error(format!("expected field names, got the key {}", describe(key))));
            };
            if !known.contains(&name.as_str()) {
                let mut message = format!("unknown field {name:?}");
                if let Some(near) = known.iter().find(|k| edit_distance(k, name) <= 2) {
                    message.push_str(&format!(" (did you mean {near:?}?)"));
                }
                message.push_str(&format!("; the known fields are {}", known.join(", ")));
                return Err(self.child(name, &NULL).error(message));
            }
        }
        Ok(Fields { node: self.clone(), map })
    }

    /// The items of a list, each with its index in the path.
    pub fn items(&self, what: &str) -> Result<Vec<Node<'a>>, ModuleError> {
        let Value::Sequence(items) = self.value else {
            return Err(self.expected(what));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(index, value)| Node { doc: Rc::clone(&self.doc), path: format!("{}[{index}]", self.path), value })
            .collect())
    }

    /// A non-empty text. Numbers read as their text, as Jackson's `asText` does.
    pub fn text(&self, what: &str) -> Result<String, ModuleError> {
        let text = match self.value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => return Err(self.expected(what)),
        };
        if text.trim().is_empty() {
            return Err(self.expected(what));
        }
        if text.chars().any(char::is_control) {
            return Err(self.error(format!("expected {what}, got a text with a control character")));
        }
        Ok(text)
    }

    /// A type name `namespace/name`.
    pub fn type_name(&self, what: &str) -> Result<TypeName, ModuleError> {
        let expectation = format!("{what} (a type name such as \"example/greeter\")");
        let text = self.text(&expectation)?;
        TypeName::parse(&text).map_err(|error| self.error(format!("expected {expectation}, got {text:?}: {error}")))
    }

    /// A whole number within `min..=max`; a text of digits counts, as in Jackson.
    pub fn integer(&self, what: &str, min: u64, max: u64) -> Result<u64, ModuleError> {
        let expectation = format!("{what} from {min} to {max}");
        let number = match self.value {
            Value::Number(number) => number.as_u64(),
            Value::String(text) => text.trim().parse().ok(),
            _ => None,
        };
        match number {
            Some(number) if (min..=max).contains(&number) => Ok(number),
            _ => Err(self.expected(&expectation)),
        }
    }

    /// A duration: a text such as `"2 min"`, or a whole number of milliseconds. Longer
    /// than [`duration_max`] is refused.
    pub fn duration(&self) -> Result<Duration, ModuleError> {
        const EXPECTED: &str = "a duration such as \"2 min\", \"10s\" or 500 (milliseconds)";
        let duration = match self.value {
            Value::Number(number) => match number.as_u64() {
                Some(millis) => Duration::from_millis(millis),
                None => return Err(self.expected(EXPECTED)),
            },
            Value::String(text) => parse_duration(text)
                .map_err(|why| self.error(format!("expected {EXPECTED}, got {}: {why}", describe(self.value))))?,
            _ => return Err(self.expected(EXPECTED)),
        };
        if duration > duration_max {
            return Err(self.error(format!("expected a duration of at most 365 days, got {}", describe(self.value))));
        }
        Ok(duration)
    }

    /// A duration that is not zero, as StateFun requires of timeouts.
    pub fn timeout(&self) -> Result<Duration, ModuleError> {
        let duration = self.duration()?;
        if duration.is_zero() {
            return Err(self.error(format!("expected a timeout longer than zero, got {}", describe(self.value))));
        }
        Ok(duration)
    }

    /// A TCP port, 1 to 65535.
    pub fn port(&self) -> Result<u16, ModuleError> {
        let port = self.integer("a port", 1, u64::from(u16::MAX))?;
        u16::try_from(port).map_err(|_| self.expected("a port from 1 to 65535"))
    }
}

/// The fields of a mapping, checked against the known names.
#[derive(Debug, Clone)]
pub(super) struct Fields<'a> {
    pub node: Node<'a>,
    map: &'a Mapping,
}

impl<'a> Fields<'a> {
    /// The field, or `None` when it is absent or has no value.
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(self.node.child(key, value)),
        }
    }

    /// The field, or an error saying it is missing and what it should be.
    pub fn require(&self, key: &str, what: &str) -> Result<Node<'a>, ModuleError> {
        self.get(key).ok_or_else(|| self.node.child(key, &NULL).error(format!("missing; expected {what}")))
    }

    /// The error for a field given where it does not belong.
    pub fn refuse(&self, key: &str, message: impl Into<String>) -> Result<(), ModuleError> {
        match self.get(key) {
            None => Ok(()),
            Some(node) => Err(node.error(message)),
        }
    }
}

/// A value as an error quotes it: texts quoted and cut, collections named.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) if text.is_empty() => "an empty text".to_owned(),
        Value::String(text) if text.chars().count() > QUOTED_CHARS_MAX => {
            let cut: String = text.chars().take(QUOTED_CHARS_MAX).collect();
            format!("{cut:?}...")
        }
        Value::String(text) => format!("{text:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

/// Levenshtein distance between two short names, to suggest the field a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    //! The value readers: what each accepts, and that refusals quote the value and name the
    //! field.

    use super::*;

    fn doc() -> Rc<Doc> {
        Rc::new(Doc { file: "m.yaml".to_owned(), number: 2, kind: Some("a/b".to_owned()), entry: None })
    }

    fn value(text: &str) -> Value {
        serde_norway::from_str(text).unwrap()
    }

    #[test]
    fn unknown_fields_are_named_with_a_suggestion() {
        let doc = doc();
        let value = value("call: 1s\ncal: 2s\n");
        let error = Node::new(&doc, "spec", &value).fields(&["call", "connect"]).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("spec.cal"));
        assert!(error.message.contains("unknown field \"cal\" (did you mean \"call\"?)"), "{error}");
        assert!(error.message.contains("call, connect"), "{error}");
    }

    #[test]
    fn readers_accept_what_jackson_accepts() {
        let doc = doc();
        let value = value("a: 12\nb: '12'\nc: 9092\nd: null\n");
        let fields = Node::new(&doc, "spec", &value).fields(&["a", "b", "c", "d"]).unwrap();
        assert_eq!(fields.require("a", "n").unwrap().integer("n", 1, 20).unwrap(), 12);
        assert_eq!(fields.require("b", "n").unwrap().integer("n", 1, 20).unwrap(), 12);
        assert_eq!(fields.require("c", "t").unwrap().text("t").unwrap(), "9092");
        assert!(fields.get("d").is_none());
        let error = fields.require("d", "a port").unwrap_err();
        assert_eq!(error.to_string(), "m.yaml, document 2 (a/b), spec.d: missing; expected a port");
    }

    #[test]
    fn out_of_range_and_wrong_types_are_refused() {
        let doc = doc();
        let value = value("a: 0\nb: [1]\nc: 1.5\nd: 400 days\n");
        let fields = Node::new(&doc, "spec", &value).fields(&["a", "b", "c", "d"]).unwrap();
        let error = fields.get("a").unwrap().port().unwrap_err();
        assert!(error.message.contains("expected a port from 1 to 65535, got 0"), "{error}");
        let error = fields.get("b").unwrap().text("a topic").unwrap_err();
        assert_eq!(error.message, "expected a topic, got a list");
        let error = fields.get("c").unwrap().duration().unwrap_err();
        assert!(error.message.ends_with("got 1.5"), "{error}");
        let error = fields.get("d").unwrap().duration().unwrap_err();
        assert!(error.message.contains("at most 365 days"), "{error}");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("call", "call"), 0);
        assert_eq!(edit_distance("call", "cal"), 1);
        assert_eq!(edit_distance("connect", "conect"), 1);
        assert_eq!(edit_distance("pool_ttl", "pool_size"), 4);
    }
}
