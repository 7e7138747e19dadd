//! GGUF metadata values: the 13 value types of the GGUF spec (llama.cpp `docs/gguf.md`,
//! `enum gguf_type`). Arrays are stored typed (`Vec<f32>`, `Vec<String>`, ...) rather than as a
//! `Vec<Value>`: a vocabulary of 150k tokens is one `Vec<String>`, and a hostile array of a billion
//! u8 costs a billion bytes, not a billion enum values.

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Array),
}

/// A metadata array: all elements of one type; an array of arrays holds arrays of any types.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<Array>),
}

// The value type ids of `enum gguf_type`.
pub(crate) const T_U8: u32 = 0;
pub(crate) const T_I8: u32 = 1;
pub(crate) const T_U16: u32 = 2;
pub(crate) const T_I16: u32 = 3;
pub(crate) const T_U32: u32 = 4;
pub(crate) const T_I32: u32 = 5;
pub(crate) const T_F32: u32 = 6;
pub(crate) const T_BOOL: u32 = 7;
pub(crate) const T_STR: u32 = 8;
pub(crate) const T_ARRAY: u32 = 9;
pub(crate) const T_U64: u32 = 10;
pub(crate) const T_I64: u32 = 11;
pub(crate) const T_F64: u32 = 12;

/// Arrays nest at most this deep (an array of arrays of arrays is depth 3); deeper is refused so a
/// hostile file cannot recurse the reader off its stack. llama.cpp itself reads no nested arrays.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// The spec's name of a value type id, for messages.
pub(crate) fn value_type_name(id: u32) -> &'static str {
    match id {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STR => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

impl Value {
    /// The value type id written before this value.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => T_U8,
            Value::I8(_) => T_I8,
            Value::U16(_) => T_U16,
            Value::I16(_) => T_I16,
            Value::U32(_) => T_U32,
            Value::I32(_) => T_I32,
            Value::U64(_) => T_U64,
            Value::I64(_) => T_I64,
            Value::F32(_) => T_F32,
            Value::F64(_) => T_F64,
            Value::Bool(_) => T_BOOL,
            Value::Str(_) => T_STR,
            Value::Array(_) => T_ARRAY,
        }
    }

    /// What this value is, for messages: "u32 7", "string", "array of 3 f32".
    pub fn describe(&self) -> String {
        match self {
            Value::Str(_) => "a string".into(),
            Value::Array(a) => format!("an array of {} {}", a.len(), value_type_name(a.type_id())),
            Value::U8(v) => format!("u8 {v}"),
            Value::I8(v) => format!("i8 {v}"),
            Value::U16(v) => format!("u16 {v}"),
            Value::I16(v) => format!("i16 {v}"),
            Value::U32(v) => format!("u32 {v}"),
            Value::I32(v) => format!("i32 {v}"),
            Value::U64(v) => format!("u64 {v}"),
            Value::I64(v) => format!("i64 {v}"),
            Value::F32(v) => format!("f32 {v}"),
            Value::F64(v) => format!("f64 {v}"),
            Value::Bool(v) => format!("bool {v}"),
        }
    }

    /// The value as an integer, whatever its integer type; None for floats, bools, strings, arrays.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// The value type id of the elements.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            Array::U8(_) => T_U8,
            Array::I8(_) => T_I8,
            Array::U16(_) => T_U16,
            Array::I16(_) => T_I16,
            Array::U32(_) => T_U32,
            Array::I32(_) => T_I32,
            Array::U64(_) => T_U64,
            Array::I64(_) => T_I64,
            Array::F32(_) => T_F32,
            Array::F64(_) => T_F64,
            Array::Bool(_) => T_BOOL,
            Array::Str(_) => T_STR,
            Array::Array(_) => T_ARRAY,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How deep arrays nest in this one: 1 for an array of scalars.
    pub fn depth(&self) -> usize {
        match self {
            Array::Array(v) => 1 + v.iter().map(Array::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// The elements as integers, whatever their integer type; None for other element types.
    pub(crate) fn to_i128(&self) -> Option<Vec<i128>> {
        fn all<T: Copy + Into<i128>>(v: &[T]) -> Vec<i128> {
            v.iter().map(|&x| x.into()).collect()
        }
        Some(match self {
            Array::U8(v) => all(v),
            Array::I8(v) => all(v),
            Array::U16(v) => all(v),
            Array::I16(v) => all(v),
            Array::U32(v) => all(v),
            Array::I32(v) => all(v),
            Array::U64(v) => all(v),
            Array::I64(v) => all(v),
            _ => return None,
        })
    }
}
