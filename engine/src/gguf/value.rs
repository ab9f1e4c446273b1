use std::fmt;

/// The type tag of a metadata value (`gguf_type` in gguf.h), numbered as in
/// the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl MetaType {
    pub fn from_id(id: u32) -> Option<Self> {
        use MetaType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        use MetaType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Bytes a value of this type takes in the file at the least. Used to
    /// refuse counts that could not fit in the bytes left, before allocating.
    pub(crate) fn min_encoded_len(self) -> usize {
        use MetaType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            // u64 length
            String => 8,
            // u32 element type + u64 count
            Array => 12,
        }
    }
}

impl fmt::Display for MetaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array. Arrays are homogeneous in GGUF, so each is stored as a
/// typed vector: the 49k-entry token tables then cost one allocation per
/// string rather than one enum per element, and getters can hand out slices.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// Nested arrays; each element may have its own element type.
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaValue {
    pub fn meta_type(&self) -> MetaType {
        match self {
            MetaValue::U8(_) => MetaType::U8,
            MetaValue::I8(_) => MetaType::I8,
            MetaValue::U16(_) => MetaType::U16,
            MetaValue::I16(_) => MetaType::I16,
            MetaValue::U32(_) => MetaType::U32,
            MetaValue::I32(_) => MetaType::I32,
            MetaValue::F32(_) => MetaType::F32,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::String(_) => MetaType::String,
            MetaValue::Array(_) => MetaType::Array,
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
        }
    }

    /// The value as an integer, when it is one; lets integer getters accept
    /// any width that holds the value, since converters differ on widths.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Short description for type-mismatch errors: the type, and the value
    /// for scalars (so an out-of-range integer shows what it was).
    pub fn describe(&self) -> String {
        match self {
            MetaValue::String(s) => format!("string of {} bytes", s.len()),
            MetaValue::Array(a) => a.describe(),
            MetaValue::F32(v) => format!("f32 {v}"),
            MetaValue::F64(v) => format!("f64 {v}"),
            MetaValue::Bool(v) => format!("bool {v}"),
            other => match other.as_integer() {
                Some(v) => format!("{} {v}", other.meta_type()),
                None => other.meta_type().to_string(),
            },
        }
    }
}

impl MetaArray {
    pub fn elem_type(&self) -> MetaType {
        match self {
            MetaArray::U8(_) => MetaType::U8,
            MetaArray::I8(_) => MetaType::I8,
            MetaArray::U16(_) => MetaType::U16,
            MetaArray::I16(_) => MetaType::I16,
            MetaArray::U32(_) => MetaType::U32,
            MetaArray::I32(_) => MetaType::I32,
            MetaArray::F32(_) => MetaType::F32,
            MetaArray::Bool(_) => MetaType::Bool,
            MetaArray::String(_) => MetaType::String,
            MetaArray::Array(_) => MetaType::Array,
            MetaArray::U64(_) => MetaType::U64,
            MetaArray::I64(_) => MetaType::I64,
            MetaArray::F64(_) => MetaType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn describe(&self) -> String {
        format!("array of {} ({} elements)", self.elem_type(), self.len())
    }
}

/// Conversion from a metadata value, used by the typed getters of
/// [`super::GgufFile`].
pub trait FromMeta<'a>: Sized {
    /// What the getter expected, for the error message.
    const EXPECTED: &'static str;
    fn from_meta(value: &'a MetaValue) -> Option<Self>;
}

macro_rules! integer_from_meta {
    ($($t:ty),*) => {$(
        impl FromMeta<'_> for $t {
            const EXPECTED: &'static str = stringify!($t);
            fn from_meta(value: &MetaValue) -> Option<Self> {
                value.as_integer().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}
integer_from_meta!(u8, i8, u16, i16, u32, i32, u64, i64, usize);

impl FromMeta<'_> for f32 {
    const EXPECTED: &'static str = "f32";
    fn from_meta(value: &MetaValue) -> Option<Self> {
        match *value {
            MetaValue::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl FromMeta<'_> for f64 {
    const EXPECTED: &'static str = "f64";
    fn from_meta(value: &MetaValue) -> Option<Self> {
        match *value {
            MetaValue::F64(v) => Some(v),
            // Widening is exact, so an f32 serves an f64 getter.
            MetaValue::F32(v) => Some(v.into()),
            _ => None,
        }
    }
}

impl FromMeta<'_> for bool {
    const EXPECTED: &'static str = "bool";
    fn from_meta(value: &MetaValue) -> Option<Self> {
        match *value {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }
}

impl<'a> FromMeta<'a> for &'a str {
    const EXPECTED: &'static str = "string";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        match value {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> FromMeta<'a> for &'a MetaArray {
    const EXPECTED: &'static str = "array";
    fn from_meta(value: &'a MetaValue) -> Option<Self> {
        match value {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! slice_from_meta {
    ($($t:ty => $variant:ident, $name:literal);* $(;)?) => {$(
        impl<'a> FromMeta<'a> for &'a [$t] {
            const EXPECTED: &'static str = $name;
            fn from_meta(value: &'a MetaValue) -> Option<Self> {
                match value {
                    MetaValue::Array(MetaArray::$variant(v)) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}
slice_from_meta! {
    u8 => U8, "array of u8";
    i8 => I8, "array of i8";
    u16 => U16, "array of u16";
    i16 => I16, "array of i16";
    u32 => U32, "array of u32";
    i32 => I32, "array of i32";
    u64 => U64, "array of u64";
    i64 => I64, "array of i64";
    f32 => F32, "array of f32";
    f64 => F64, "array of f64";
    bool => Bool, "array of bool";
    String => String, "array of string";
    MetaArray => Array, "array of array";
}
