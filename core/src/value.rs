//! Values: messages and state are bytes tagged with a type name.

use bytes::Bytes;

use crate::{FunctionError, TypeName};

/// A value as it travels and rests: bytes plus the type name that says how to read them.
#[derive(Clone, PartialEq, Eq)]
pub struct TypedValue {
    pub typename: TypeName,
    pub value: Bytes,
}

impl TypedValue {
    pub fn new(typename: TypeName, value: impl Into<Bytes>) -> TypedValue {
        TypedValue { typename, value: value.into() }
    }

    /// Encodes `value` with its [`ValueType`].
    pub fn of<T: ValueType>(value: &T) -> TypedValue {
        TypedValue { typename: T::typename(), value: value.encode() }
    }

    /// Decodes the bytes as `T`, checking the type name first.
    pub fn decode<T: ValueType>(&self) -> Result<T, FunctionError> {
        let expected = T::typename();
        if self.typename != expected {
            return Err(FunctionError(format!("expected a value of type {expected}, got {}", self.typename)));
        }
        T::decode(&self.value)
    }

    /// The bytes as UTF-8 text, whatever the type name says.
    pub fn as_text(&self) -> Result<&str, FunctionError> {
        std::str::from_utf8(&self.value)
            .map_err(|_| FunctionError(format!("a {} value is not UTF-8 text", self.typename)))
    }
}

impl std::fmt::Debug for TypedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypedValue({}, {} bytes)", self.typename, self.value.len())
    }
}

/// A Rust type that can be a state value or a message: its type name and its byte encoding.
/// [`crate::types`] implements it for the StateFun built-in types.
pub trait ValueType: Sized {
    fn typename() -> TypeName;
    fn encode(&self) -> Bytes;
    fn decode(bytes: &[u8]) -> Result<Self, FunctionError>;
}
