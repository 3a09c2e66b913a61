//! StateFun's built-in value types (`io.statefun.types/*`), byte for byte as the official
//! SDKs write them: each is a protobuf message with the value in field 1, so an absent field
//! (zero bytes) reads as the default value.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{FunctionError, TypeName, ValueType};

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
}
