//! StateFun's built-in value types (`io.statefun.types/*`), byte for byte as the official
//! SDKs write them: each is a protobuf message with the value in field 1, so an absent field
//! (zero bytes) reads as the default value.

use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{FunctionError, TypeName, TypedValue, ValueType};

/// The namespace of the built-in types.
pub const NAMESPACE: &str = "io.statefun.types";

fn builtin(name: &str) -> TypeName {
    // The names below are valid by construction; an error here is a programmer error.
    match TypeName::new(NAMESPACE, name) {
        Ok(typename) => typename,
        Err(error) => panic!("built-in type name {name}: {error}"),
    }
}

/// Protobuf wire types used by the wrappers.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LENGTH_DELIMITED: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn malformed(typename: &str, why: &str) -> FunctionError {
    FunctionError(format!("malformed {NAMESPACE}/{typename} value: {why}"))
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Finds the last occurrence of field 1 with `wire_type` (protobuf: the last one wins),
/// skipping unknown fields, and returns its payload bytes (for varints: the encoded varint).
fn field_one<'a>(bytes: &'a [u8], wire_type: u8, typename: &str) -> Result<Option<&'a [u8]>, FunctionError> {
    let mut at = 0;
    let mut found = None;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at).ok_or_else(|| malformed(typename, "truncated key"))?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        let start = at;
        let end = match wire {
            WIRE_VARINT => {
                read_varint(bytes, &mut at).ok_or_else(|| malformed(typename, "truncated varint"))?;
                at
            }
            WIRE_FIXED64 => at + 8,
            WIRE_FIXED32 => at + 4,
            WIRE_LENGTH_DELIMITED => {
                let len = read_varint(bytes, &mut at).ok_or_else(|| malformed(typename, "truncated length"))?;
                let len = usize::try_from(len).map_err(|_| malformed(typename, "length overflows"))?;
                at.checked_add(len).ok_or_else(|| malformed(typename, "length overflows"))?
            }
            _ => return Err(malformed(typename, "unsupported wire type")),
        };
        if end > bytes.len() {
            return Err(malformed(typename, "truncated field"));
        }
        if field == 1 && wire == wire_type {
            found = Some(if wire == WIRE_LENGTH_DELIMITED { &bytes[at..end] } else { &bytes[start..end] });
        } else if field == 1 {
            return Err(malformed(typename, "field 1 has the wrong wire type"));
        }
        at = end;
    }
    Ok(found)
}

fn fixed<const N: usize>(payload: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&payload[..N]);
    out
}

macro_rules! fixed_width_type {
    ($rust:ty, $name:literal, $wire:expr, $width:literal) => {
        impl ValueType for $rust {
            fn typename() -> TypeName {
                builtin($name)
            }

            fn encode(&self) -> Bytes {
                if *self == <$rust>::default() {
                    return Bytes::new();
                }
                let mut out = BytesMut::with_capacity(1 + $width);
                out.put_u8((1 << 3) | $wire);
                out.put_slice(&self.to_le_bytes());
                out.freeze()
            }

            fn decode(bytes: &[u8]) -> Result<Self, FunctionError> {
                Ok(match field_one(bytes, $wire, $name)? {
                    Some(payload) => <$rust>::from_le_bytes(fixed::<$width>(payload)),
                    None => <$rust>::default(),
                })
            }
        }
    };
}

fixed_width_type!(i64, "long", WIRE_FIXED64, 8);
fixed_width_type!(i32, "int", WIRE_FIXED32, 4);
fixed_width_type!(f64, "double", WIRE_FIXED64, 8);
fixed_width_type!(f32, "float", WIRE_FIXED32, 4);

impl ValueType for bool {
    fn typename() -> TypeName {
        builtin("bool")
    }

    fn encode(&self) -> Bytes {
        if *self {
            Bytes::from_static(&[(1 << 3) | WIRE_VARINT, 1])
        } else {
            Bytes::new()
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, FunctionError> {
        match field_one(bytes, WIRE_VARINT, "bool")? {
            Some(varint) => Ok(read_varint(varint, &mut 0).unwrap_or(0) != 0),
            None => Ok(false),
        }
    }
}

impl ValueType for String {
    fn typename() -> TypeName {
        builtin("string")
    }

    fn encode(&self) -> Bytes {
        if self.is_empty() {
            return Bytes::new();
        }
        let mut out = BytesMut::with_capacity(self.len() + 6);
        out.put_u8((1 << 3) | WIRE_LENGTH_DELIMITED);
        write_varint(&mut out, self.len() as u64);
        out.put_slice(self.as_bytes());
        out.freeze()
    }

    fn decode(bytes: &[u8]) -> Result<Self, FunctionError> {
        match field_one(bytes, WIRE_LENGTH_DELIMITED, "string")? {
            Some(payload) => String::from_utf8(payload.to_vec()).map_err(|_| malformed("string", "not UTF-8")),
            None => Ok(String::new()),
        }
    }
}

/// Whether `typename` is one of the built-in types that [`builtin_from_text`] and
/// [`builtin_to_text`] read and write.
pub fn is_builtin(typename: &TypeName) -> bool {
    typename.namespace() == NAMESPACE && BUILTINS.iter().any(|(name, _)| *name == typename.name())
}

/// The built-in types by name, each with the text form a person types, for error messages.
const BUILTINS: [(&str, &str); 6] = [
    ("bool", "true or false"),
    ("int", "a 32-bit integer"),
    ("long", "a 64-bit integer"),
    ("float", "a 32-bit floating-point number"),
    ("double", "a 64-bit floating-point number"),
    ("string", "UTF-8 text"),
];

/// Reads a value of a built-in type from the text a person types (`5`, `true`, `2.5`,
/// `hello`) into its wire encoding: `None` when `typename` is not a built-in type, an error
/// saying what was expected when the text is not a value of the type. Numbers and booleans
/// may have surrounding whitespace (a file's final newline); a string is taken as it is.
pub fn builtin_from_text(typename: &TypeName, text: &str) -> Option<Result<TypedValue, String>> {
    if !is_builtin(typename) {
        return None;
    }
    let number = text.trim();
    Some(match typename.name() {
        "bool" => parse_as::<bool>(number, typename),
        "int" => parse_as::<i32>(number, typename),
        "long" => parse_as::<i64>(number, typename),
        "float" => parse_as::<f32>(number, typename),
        "double" => parse_as::<f64>(number, typename),
        _ => Ok(TypedValue::of(&text.to_string())),
    })
}

fn parse_as<T: ValueType + FromStr>(text: &str, typename: &TypeName) -> Result<TypedValue, String> {
    text.parse::<T>().map(|value| TypedValue::of(&value)).map_err(|_| {
        let (_, expected) = BUILTINS.iter().find(|(name, _)| *name == typename.name()).copied().unwrap_or_default();
        let shown: String = text.chars().take(TEXT_SHOWN_CHARS_MAX).collect();
        let ellipsis = if shown.len() < text.len() { "..." } else { "" };
        format!("{shown:?}{ellipsis} is not an {typename} ({expected})")
    })
}

/// Characters of a rejected text quoted back in the error: enough to recognise it.
const TEXT_SHOWN_CHARS_MAX: usize = 40;

/// Writes a value of a built-in type as text (`6`, `true`, `2.5`, `hello`), the inverse of
/// [`builtin_from_text`]: `None` when its type is not a built-in type, an error when its
/// bytes are not a valid encoding of the type. Floating-point numbers are written in the
/// shortest form that reads back to the same number (`6.0`, `0.1`, `1e300`, `NaN`, `inf`).
pub fn builtin_to_text(value: &TypedValue) -> Option<Result<String, String>> {
    if !is_builtin(&value.typename) {
        return None;
    }
    let bytes = &value.value[..];
    let text = match value.typename.name() {
        "bool" => bool::decode(bytes).map(|value| value.to_string()),
        "int" => i32::decode(bytes).map(|value| value.to_string()),
        "long" => i64::decode(bytes).map(|value| value.to_string()),
        "float" => f32::decode(bytes).map(|value| format!("{value:?}")),
        "double" => f64::decode(bytes).map(|value| format!("{value:?}")),
        _ => String::decode(bytes),
    };
    Some(text.map_err(|error| error.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_matches_the_protobuf_wrapper_encoding() {
        // LongWrapper { value: 5 } as protoc writes it: tag 0x09, then 8 little-endian bytes.
        assert_eq!(&5i64.encode()[..], &[0x09, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(0i64.encode().len(), 0);
        assert_eq!(i64::decode(&[]).unwrap(), 0);
        assert_eq!(i64::decode(&(-7i64).encode()).unwrap(), -7);
    }

    #[test]
    fn wrappers_round_trip() {
        for value in [i32::MIN, -1, 0, 1, i32::MAX] {
            assert_eq!(i32::decode(&value.encode()).unwrap(), value);
        }
        for value in [true, false] {
            assert_eq!(bool::decode(&value.encode()).unwrap(), value);
        }
        for value in ["", "hello", &"x".repeat(300)] {
            assert_eq!(String::decode(&value.to_string().encode()).unwrap(), value);
        }
        assert_eq!(f64::decode(&2.5f64.encode()).unwrap(), 2.5);
        assert_eq!(f32::decode(&(-1.5f32).encode()).unwrap(), -1.5);
    }

    #[test]
    fn string_matches_the_protobuf_wrapper_encoding() {
        assert_eq!(&"hi".to_string().encode()[..], &[0x0a, 2, b'h', b'i']);
    }

    #[test]
    fn unknown_fields_are_skipped_and_the_last_field_wins() {
        // field 2 varint 7, field 1 fixed64 1, field 1 fixed64 2
        let mut bytes = vec![0x10, 7, 0x09, 1, 0, 0, 0, 0, 0, 0, 0, 0x09, 2, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(i64::decode(&bytes).unwrap(), 2);
        bytes.truncate(15);
        assert!(i64::decode(&bytes).unwrap_err().0.contains("truncated"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[0xff][..], &[0x0a, 0x05, b'a'], &[0x0f], &[0x08]] {
            assert!(String::decode(bytes).is_err() || i64::decode(bytes).is_err());
        }
        assert!(i64::decode(&[0x0a, 0]).is_err(), "wrong wire type for field 1");
    }

    fn from_text(name: &str, text: &str) -> Result<TypedValue, String> {
        builtin_from_text(&builtin(name), text).expect("a built-in type")
    }

    #[test]
    fn text_becomes_the_statefun_wire_bytes() {
        // The bytes of statefun-notes.md section 2.2, as the official SDKs write them.
        let cases: [(&str, &str, &[u8]); 11] = [
            ("int", "1", &[0x0d, 1, 0, 0, 0]),
            ("int", "0", &[]),
            ("int", "-1", &[0x0d, 0xff, 0xff, 0xff, 0xff]),
            ("long", "5", &[0x09, 5, 0, 0, 0, 0, 0, 0, 0]),
            ("bool", "true", &[0x08, 1]),
            ("bool", "false", &[]),
            ("string", "Alice", &[0x0a, 5, 0x41, 0x6c, 0x69, 0x63, 0x65]),
            ("string", "", &[]),
            ("float", "1.5", &[0x0d, 0, 0, 0xc0, 0x3f]),
            ("double", "2.5", &[0x09, 0, 0, 0, 0, 0, 0, 0x04, 0x40]),
            ("double", "0", &[]),
        ];
        for (name, text, bytes) in cases {
            let value = from_text(name, text).unwrap();
            assert_eq!(value.typename, builtin(name), "{name} {text}");
            assert_eq!(&value.value[..], bytes, "{name} {text}");
        }
    }

    #[test]
    fn text_round_trips_through_the_wire_encoding() {
        let cases = [
            ("bool", "true"),
            ("bool", "false"),
            ("int", "6"),
            ("int", "-2147483648"),
            ("long", "9223372036854775807"),
            ("float", "0.1"),
            ("float", "-1.5"),
            ("double", "6.0"),
            ("double", "0.1"),
            ("double", "1e300"),
            ("double", "NaN"),
            ("double", "-inf"),
            ("string", "hello"),
            ("string", " spaces and a newline kept\n"),
        ];
        for (name, text) in cases {
            let value = from_text(name, text).unwrap();
            assert_eq!(builtin_to_text(&value).unwrap().unwrap(), text, "{name}");
        }
        assert_eq!(builtin_to_text(&TypedValue::of(&6.0f64)).unwrap().unwrap(), "6.0");
        assert_eq!(builtin_to_text(&TypedValue::of(&6i32)).unwrap().unwrap(), "6");
    }

    #[test]
    fn numbers_may_have_surrounding_whitespace_strings_keep_it() {
        assert_eq!(from_text("int", " 5\n").unwrap(), TypedValue::of(&5i32));
        assert_eq!(from_text("bool", "true\r\n").unwrap(), TypedValue::of(&true));
        assert_eq!(from_text("string", " a\n").unwrap(), TypedValue::of(&" a\n".to_string()));
    }

    #[test]
    fn text_that_is_not_of_the_type_says_what_was_expected() {
        assert_eq!(from_text("int", "x").unwrap_err(), r#""x" is not an io.statefun.types/int (a 32-bit integer)"#);
        assert_eq!(
            from_text("int", "2147483648").unwrap_err(),
            r#""2147483648" is not an io.statefun.types/int (a 32-bit integer)"#
        );
        assert!(from_text("bool", "yes").unwrap_err().contains("(true or false)"));
        assert!(from_text("long", "1.5").unwrap_err().contains("a 64-bit integer"));
        assert!(from_text("double", "").unwrap_err().contains("a 64-bit floating-point number"));
        let long = "9".repeat(1000);
        let error = from_text("int", &long).unwrap_err();
        assert!(error.len() < 120 && error.contains("\"... is not"), "{error}");
    }

    #[test]
    fn other_types_are_not_built_in() {
        for name in ["io.statefun.types/unset", "io.statefun.types/Int", "example/int", "a.io.statefun.types/int"] {
            let typename = TypeName::parse(name).unwrap();
            assert!(!is_builtin(&typename), "{name}");
            assert!(builtin_from_text(&typename, "5").is_none(), "{name}");
            assert!(builtin_to_text(&TypedValue::new(typename, "5")).is_none(), "{name}");
        }
    }

    #[test]
    fn malformed_wire_bytes_are_an_error_when_written_as_text() {
        let value = TypedValue::new(builtin("int"), vec![0x0d, 1]);
        assert!(builtin_to_text(&value).unwrap().unwrap_err().contains("io.statefun.types/int"));
        let value = TypedValue::new(builtin("string"), vec![0x0a, 1, 0xff]);
        assert!(builtin_to_text(&value).unwrap().unwrap_err().contains("not UTF-8"));
    }
}
