//! Lenient JSON fields: a field of the wrong type reads as absent instead of failing the whole
//! body, in one pass and without buffering the value first (as `serde_json::Value` or
//! `serde_with::DefaultOnError` would, at three times the cost on the webhook path).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A field kept when its JSON value has the shape of `T`, `None` otherwise (and when absent).
#[derive(Debug)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// What a lenient field holding a scalar saw: the scalar, or an object or array, skipped.
#[derive(Debug)]
pub enum Scalar<'de> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    /// A number with a fraction or an exponent: no field reads one.
    Float,
    /// Borrowed from the body unless it had escapes.
    Str(Cow<'de, str>),
    /// An object or an array, checked for JSON syntax but not decoded.
    Nested,
}

/// How a JSON value becomes a `Self`; whatever a type does not read reads as `None`.
///
/// A scalar type reads the [`Scalar`] that one shared reader made of the value. Only nested
/// types (`NESTED`: objects and arrays) get a reader of their own, `from_map` and `from_seq`.
/// A reader per field type would repeat serde_json's value reader in each: on a busy server
/// the kernel's network code evicts the parser from the instruction cache between two
/// webhooks, and a webhook's first parse costs two to four times a second one of the same body
/// (`docs/benchmark.md`), so the parser's size is much of its cost.
pub trait Shape<'de>: Sized {
    /// An object or array type, read by `from_map` and `from_seq`; otherwise `from_scalar`.
    const NESTED: bool = false;

    fn from_scalar(_: Scalar<'de>) -> Option<Self> {
        None
    }
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }
    fn from_seq<A: SeqAccess<'de>>(seq: A) -> Result<Option<Self>, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| None)
    }
}

impl<'de, T: Shape<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = None;
        read_into(deserializer, &mut value)?;
        Ok(Lenient(value))
    }
}

/// Reads one JSON value as a `T` into `place` (`None` when it has another shape).
fn read_into<'de, T: Shape<'de>, D: Deserializer<'de>>(
    deserializer: D,
    place: &mut Option<T>,
) -> Result<(), D::Error> {
    if T::NESTED {
        deserializer.deserialize_any(NestedVisitor(place))
    } else {
        *place = T::from_scalar(deserializer.deserialize_any(ScalarVisitor)?);
        Ok(())
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float)
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Scalar::Nested)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Scalar::Nested)
    }
}

/// Reads an object or an array as `T` into its place; a scalar in its place leaves `None`.
///
/// It writes the value instead of returning it: serde_json's reader moves a visitor's value
/// through several layers, six copies of a webhook's ~280-byte top-level struct, which took 3%
/// of the exporter's user CPU per webhook under load (`docs/benchmark.md`).
struct NestedVisitor<'p, T>(&'p mut Option<T>);

impl<'de, T: Shape<'de>> Visitor<'de> for NestedVisitor<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        *self.0 = T::from_map(map)?;
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        *self.0 = T::from_seq(seq)?;
        Ok(())
    }
}

impl Shape<'_> for bool {
    fn from_scalar(value: Scalar<'_>) -> Option<Self> {
        match value {
            Scalar::Bool(v) => Some(v),
            _ => None,
        }
    }
}

impl Shape<'_> for u64 {
    fn from_scalar(value: Scalar<'_>) -> Option<Self> {
        match value {
            Scalar::U64(v) => Some(v),
            _ => None,
        }
    }
}

impl Shape<'_> for i64 {
    fn from_scalar(value: Scalar<'_>) -> Option<Self> {
        match value {
            Scalar::U64(v) => i64::try_from(v).ok(),
            Scalar::I64(v) => Some(v),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Shape<'de> for Cow<'a, str> {
    fn from_scalar(value: Scalar<'de>) -> Option<Self> {
        match value {
            Scalar::Str(text) => Some(text),
            _ => None,
        }
    }
}

/// Any value at all: only the key's presence matters.
#[derive(Debug)]
pub struct Present;

impl<'de> Shape<'de> for Present {
    fn from_scalar(_: Scalar<'de>) -> Option<Self> {
        Some(Present)
    }
}

/// A JSON array whose object elements are kept; other elements are skipped.
impl<'de, T: Shape<'de>> Shape<'de> for Vec<T> {
    const NESTED: bool = true;

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::new();
        while let Some(Lenient(item)) = seq.next_element::<Lenient<T>>()? {
            items.extend(item);
        }
        Ok(Some(items))
    }
}

/// Makes a struct whose fields are all [`Lenient`] (and which derives `Deserialize` with
/// `#[serde(default)]`) readable from a JSON object, and absent for any other shape.
macro_rules! lenient_object {
    ($($name:ident),+ $(,)?) => {$(
        impl<'de: 'a, 'a> crate::source::lenient::Shape<'de> for $name<'a> {
            const NESTED: bool = true;

            fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                <Self as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )
                .map(Some)
            }
        }
    )+};
}
pub(crate) use lenient_object;

/// Reads a whole body as a lenient object: `None` when it is JSON but not an object.
///
/// Skipped values are checked for JSON syntax but not decoded; nesting inside them costs no
/// stack, so any depth is safe.
pub fn object<'de, T: Shape<'de>>(body: &'de str) -> serde_json::Result<Option<T>> {
    let mut value = None;
    object_into(body, &mut value)?;
    Ok(value)
}

/// [`object`], written into `place`: for a large `T`, what a caller keeps in place is not
/// copied again on its way out.
pub fn object_into<'de, T: Shape<'de>>(
    body: &'de str,
    place: &mut Option<T>,
) -> serde_json::Result<()> {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    read_into(&mut deserializer, place)?;
    deserializer.end()
}
