//! Lenient JSON fields: a field of the wrong type reads as absent instead of failing the whole
//! body, in one pass and without buffering the value first (as `serde_json::Value` or
//! `serde_with::DefaultOnError` would, at three times the cost on the webhook path).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A field kept when its JSON value has the shape of `T`, `None` otherwise (and when absent).
#[derive(Debug)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// How each JSON shape becomes a `Self`; every shape not overridden reads as `None`.
pub trait Shape<'de>: Sized {
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_borrowed_str(text: &'de str) -> Option<Self> {
        Self::from_str(text)
    }
    fn from_null() -> Option<Self> {
        None
    }
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl<'de, T: Shape<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ShapeVisitor(PhantomData))
            .map(Lenient)
    }
}

struct ShapeVisitor<T>(PhantomData<T>);

impl<'de, T: Shape<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(T::from_bool(v))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(T::from_u64(v))
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(T::from_i64(v))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(T::from_f64(v))
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(T::from_str(v))
    }
    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(T::from_borrowed_str(v))
    }
    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(T::from_null())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::from_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::from_seq(seq)
    }
}

impl Shape<'_> for bool {
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl Shape<'_> for u64 {
    fn from_u64(v: u64) -> Option<Self> {
        Some(v)
    }
}

impl Shape<'_> for i64 {
    fn from_u64(v: u64) -> Option<Self> {
        i64::try_from(v).ok()
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v)
    }
}

impl<'de: 'a, 'a> Shape<'de> for Cow<'a, str> {
    fn from_str(text: &str) -> Option<Self> {
        Some(Cow::Owned(text.to_owned()))
    }
    fn from_borrowed_str(text: &'de str) -> Option<Self> {
        Some(Cow::Borrowed(text))
    }
}

/// Any value at all: only the key's presence matters.
#[derive(Debug)]
pub struct Present;

impl<'de> Shape<'de> for Present {
    fn from_bool(_: bool) -> Option<Self> {
        Some(Present)
    }
    fn from_u64(_: u64) -> Option<Self> {
        Some(Present)
    }
    fn from_i64(_: i64) -> Option<Self> {
        Some(Present)
    }
    fn from_f64(_: f64) -> Option<Self> {
        Some(Present)
    }
    fn from_str(_: &str) -> Option<Self> {
        Some(Present)
    }
    fn from_null() -> Option<Self> {
        Some(Present)
    }
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Some(Present))
    }
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Some(Present))
    }
}

/// A JSON array whose object elements are kept; other elements are skipped.
impl<'de, T: Shape<'de>> Shape<'de> for Vec<T> {
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
    serde_json::from_str::<Lenient<T>>(body).map(|Lenient(value)| value)
}
