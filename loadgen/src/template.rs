//! Request templates: a path or body in which every `{key}` stands for the request's key.
//!
//! A template is parsed once into literal pieces and key slots, so rendering a request is a
//! few copies; a template without a slot renders to the same bytes every time.

use std::fmt::Write as _;

/// The placeholder replaced by the request's key.
pub const KEY_PLACEHOLDER: &str = "{key}";

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Key,
}

impl Template {
    /// Parses `text`; any text is a valid template (braces other than `{key}` are literal).
    pub fn parse(text: &str) -> Template {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(KEY_PLACEHOLDER) {
            if at > 0 {
                pieces.push(Piece::Literal(rest[..at].to_string()));
            }
            pieces.push(Piece::Key);
            rest = &rest[at + KEY_PLACEHOLDER.len()..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        Template { pieces }
    }

    /// Whether the template renders the same text for every key.
    pub fn is_constant(&self) -> bool {
        !self.pieces.contains(&Piece::Key)
    }

    /// Renders the template for key number `key` (rendered as `k{key}`) into `out`.
    pub fn render_into(&self, key: u64, out: &mut String) {
        out.clear();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                // Writing into a String cannot fail.
                Piece::Key => {
                    let _ = write!(out, "{}", KeyName(key));
                }
            }
        }
    }

    /// Renders the template for key number `key` into a new string.
    pub fn render(&self, key: u64) -> String {
        let mut out = String::new();
        self.render_into(key, &mut out);
        out
    }
}

/// How a key number appears in requests: `k{n}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyName(pub u64);

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "k{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    //! Templates with and without key slots rendered and compared with the expected text.

    use super::*;

    #[test]
    fn every_key_slot_is_replaced() {
        let template = Template::parse("/v1/call/example/counter/{key}");
        assert_eq!(template.render(42), "/v1/call/example/counter/k42");
        assert!(!template.is_constant());

        let twice = Template::parse("{key}-{key}");
        assert_eq!(twice.render(7), "k7-k7");
        assert_eq!(Template::parse("{key}").render(0), "k0");
    }

    #[test]
    fn text_without_a_slot_is_kept_as_is() {
        for text in ["", "1", "{hops}", "{ key }", "{{key}", "{ke}y}"] {
            let template = Template::parse(text);
            let expected = text.replace(KEY_PLACEHOLDER, "k3");
            assert_eq!(template.render(3), expected, "{text:?}");
        }
        assert!(Template::parse("1").is_constant());
        assert!(!Template::parse("{{key}").is_constant());
    }

    #[test]
    fn render_into_reuses_the_buffer() {
        let template = Template::parse("a{key}b");
        let mut out = String::from("left over");
        template.render_into(10, &mut out);
        assert_eq!(out, "ak10b");
        template.render_into(9, &mut out);
        assert_eq!(out, "ak9b");
    }
}
