//! Decoding of the GGUF header, metadata and tensor infos from a byte slice.
//!
//! Invariant: every read goes through [`Cursor`], which checks bounds, and
//! every count read from the file is checked against the bytes left before
//! anything is allocated for it, so hostile input costs at most a small
//! multiple of its own size and never panics.

use std::collections::HashMap;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{MetaArray, MetaType, MetaValue};

type Result<T> = std::result::Result<T, GgufError>;

/// Lazily built description of the field being read, so the happy path
/// formats no strings.
type What<'w> = &'w dyn Fn() -> String;

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub(crate) const MAX_DIMS: u32 = 4;
/// Nested arrays recurse; a file made of nothing but array headers must not
/// be able to exhaust the stack. Real files nest at most once.
const MAX_ARRAY_DEPTH: usize = 16;
/// Smallest tensor info: name length, dimension count, type, offset.
const MIN_TENSOR_INFO_LEN: usize = 8 + 4 + 4 + 8;
/// Smallest metadata entry: key length, value type, a one-byte value.
const MIN_KV_LEN: usize = 8 + 4 + 1;

/// Everything a GGUF file says about itself, with byte positions resolved
/// against the buffer it was parsed from.
#[derive(Debug)]
pub(crate) struct Layout {
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub meta_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: usize,
}

/// Description of one tensor. Invariant (checked at parse time): its data,
/// `n_bytes` from `data_start`, lies within the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    data_start: usize,
    n_bytes: usize,
    n_elements: usize,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order: `dims()[0]` is the innermost, contiguous
    /// one (the row length), the reverse of PyTorch's shape.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Offset of the data relative to the start of the data section, as
    /// written in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Absolute offset of the data in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }

    pub fn n_elements(&self) -> usize {
        self.n_elements
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: What<'_>) -> Result<&'a [u8]> {
        let truncated = || GgufError::Truncated {
            offset: self.pos,
            what: what(),
            needed: n,
            available: self.remaining(),
        };
        let len = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(len).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: What<'_>) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        // `take` returned exactly N bytes; the fallback is unreachable.
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self, what: What<'_>) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: What<'_>) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What<'_>) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn malformed(&self, offset: usize, what: What<'_>, reason: String) -> GgufError {
        GgufError::Malformed {
            offset,
            what: what(),
            reason,
        }
    }

    fn string(&mut self, what: What<'_>) -> Result<String> {
        let len = self.u64(&|| format!("{} length", what()))?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.malformed(start, what, format!("invalid UTF-8: {e}")))
    }

    /// Reads a count and checks that `count` elements of at least
    /// `min_len` bytes each fit in what is left, so the caller may allocate
    /// for it.
    fn count(&mut self, min_len: usize, what: What<'_>) -> Result<usize> {
        let start = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_len))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(self.malformed(
                start,
                what,
                format!(
                    "count {n} cannot fit in the {} bytes left (each entry takes at least {min_len})",
                    self.remaining()
                ),
            ));
        }
        // `fits` implies the conversion succeeds.
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn meta_type(&mut self, what: What<'_>) -> Result<MetaType> {
        let start = self.pos;
        let id = self.u32(what)?;
        MetaType::from_id(id)
            .ok_or_else(|| self.malformed(start, what, format!("unknown metadata type id {id}")))
    }

    fn value(&mut self, ty: MetaType, what: What<'_>) -> Result<MetaValue> {
        Ok(match ty {
            MetaType::U8 => MetaValue::U8(self.u8(what)?),
            MetaType::I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            MetaType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            MetaType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            MetaType::U32 => MetaValue::U32(self.u32(what)?),
            MetaType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            MetaType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            MetaType::Bool => MetaValue::Bool(self.bool(what)?),
            MetaType::String => MetaValue::String(self.string(what)?),
            MetaType::Array => MetaValue::Array(self.meta_array(0, what)?),
            MetaType::U64 => MetaValue::U64(self.u64(what)?),
            MetaType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            MetaType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    fn bool(&mut self, what: What<'_>) -> Result<bool> {
        let start = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.malformed(start, what, format!("bool byte is {b}, not 0 or 1"))),
        }
    }

    /// Reads `n` elements with `read`, naming each by its index on error.
    fn elems<T>(
        &mut self,
        n: usize,
        what: What<'_>,
        mut read: impl FnMut(&mut Self, What<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(read(self, &|| format!("{}[{i}]", what()))?);
        }
        Ok(out)
    }

    fn meta_array(&mut self, depth: usize, what: What<'_>) -> Result<MetaArray> {
        let start = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(
                start,
                what,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let elem = self.meta_type(&|| format!("{} array element type", what()))?;
        let n = self.count(elem.min_encoded_len(), &|| {
            format!("{} array length", what())
        })?;
        macro_rules! le {
            ($t:ty) => {
                |c: &mut Self, w: What<'_>| c.array(w).map(<$t>::from_le_bytes)
            };
        }
        Ok(match elem {
            MetaType::U8 => MetaArray::U8(self.take(n as u64, what)?.to_vec()),
            MetaType::I8 => MetaArray::I8(self.elems(n, what, le!(i8))?),
            MetaType::U16 => MetaArray::U16(self.elems(n, what, le!(u16))?),
            MetaType::I16 => MetaArray::I16(self.elems(n, what, le!(i16))?),
            MetaType::U32 => MetaArray::U32(self.elems(n, what, le!(u32))?),
            MetaType::I32 => MetaArray::I32(self.elems(n, what, le!(i32))?),
            MetaType::F32 => MetaArray::F32(self.elems(n, what, le!(f32))?),
            MetaType::U64 => MetaArray::U64(self.elems(n, what, le!(u64))?),
            MetaType::I64 => MetaArray::I64(self.elems(n, what, le!(i64))?),
            MetaType::F64 => MetaArray::F64(self.elems(n, what, le!(f64))?),
            MetaType::Bool => MetaArray::Bool(self.elems(n, what, |c, w| c.bool(w))?),
            MetaType::String => MetaArray::String(self.elems(n, what, |c, w| c.string(w))?),
            MetaType::Array => {
                MetaArray::Array(self.elems(n, what, |c, w| c.meta_array(depth + 1, w))?)
            }
        })
    }
}

/// Parses everything but the tensor data, and checks that every tensor's
/// data lies within `buf`.
pub(crate) fn parse_layout(buf: &[u8]) -> Result<Layout> {
    let mut cur = Cursor { buf, pos: 0 };

    let magic: [u8; 4] = cur.array(&|| "magic".to_owned())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(&|| "version".to_owned())?;
    check_version(version)?;

    let n_tensors = cur.count(MIN_TENSOR_INFO_LEN, &|| "tensor count".to_owned())?;
    let n_kv = cur.count(MIN_KV_LEN, &|| "metadata count".to_owned())?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut meta_index = HashMap::with_capacity(n_kv);
    let mut alignment_at = 0;
    for i in 0..n_kv {
        let key = cur.string(&|| format!("metadata {i} key"))?;
        let what = || format!("metadata {i} ('{key}') value");
        let ty = cur.meta_type(&|| format!("metadata {i} ('{key}') value type"))?;
        let value_at = cur.pos;
        let value = cur.value(ty, &what)?;
        if key == ALIGNMENT_KEY {
            alignment_at = value_at;
        }
        if meta_index.insert(key.clone(), i).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match meta_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) {
        None => DEFAULT_ALIGNMENT,
        Some((_, value)) => alignment_from(value).map_err(|reason| GgufError::Malformed {
            offset: alignment_at,
            what: format!("metadata '{ALIGNMENT_KEY}'"),
            reason,
        })?,
    };

    let mut raw = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        raw.push(read_tensor_info(&mut cur, i)?);
    }

    let data_offset = align_up(cur.pos, alignment).ok_or_else(|| GgufError::Malformed {
        offset: cur.pos,
        what: "data section start".to_owned(),
        reason: format!("aligning to {alignment} overflows"),
    })?;

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for r in raw {
        let info = resolve_tensor(r, alignment, data_offset, buf.len())?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(GgufError::DuplicateTensor { name: info.name });
        }
        tensors.push(info);
    }

    Ok(Layout {
        version,
        metadata,
        meta_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

fn check_version(version: u32) -> Result<()> {
    let reason = match version {
        2 | 3 => return Ok(()),
        1 => "v1 used 32-bit counts and lengths; re-convert the model with a current llama.cpp",
        // A big-endian file read as little-endian puts the version in the top byte.
        v if v.swap_bytes() <= 3 => "the file is big-endian; only little-endian GGUF is read",
        0 => "no such version",
        _ => "newer than this reader (v2 and v3 are read)",
    };
    Err(GgufError::UnsupportedVersion { version, reason })
}

/// ggml requires `general.alignment` to be a u32 power of two.
fn alignment_from(value: &MetaValue) -> std::result::Result<u64, String> {
    match *value {
        MetaValue::U32(a) if a.is_power_of_two() => Ok(a.into()),
        MetaValue::U32(a) => Err(format!("alignment {a} is not a power of two")),
        ref other => Err(format!("expected u32, found {}", other.describe())),
    }
}

fn align_up(pos: usize, alignment: u64) -> Option<usize> {
    let a = usize::try_from(alignment).ok()?;
    pos.checked_next_multiple_of(a)
}

/// A tensor info as read, before its size and position are checked.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
}

fn read_tensor_info(cur: &mut Cursor<'_>, i: usize) -> Result<RawTensorInfo> {
    let name = cur.string(&|| format!("tensor info {i} name"))?;
    let ctx = |field: &str| format!("tensor info {i} ('{name}') {field}");

    let dims_at = cur.pos;
    let n_dims = cur.u32(&|| ctx("dimension count"))?;
    if n_dims > MAX_DIMS {
        return Err(cur.malformed(
            dims_at,
            &|| ctx("dimension count"),
            format!("{n_dims} dimensions, ggml allows at most {MAX_DIMS}"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        dims.push(cur.u64(&|| ctx(&format!("dim {d}")))?);
    }

    let type_at = cur.pos;
    let type_id = cur.u32(&|| ctx("ggml type"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
        id: type_id,
        tensor: name.clone(),
        offset: type_at,
    })?;
    let offset = cur.u64(&|| ctx("data offset"))?;
    Ok(RawTensorInfo {
        name,
        dims,
        ty,
        offset,
    })
}

fn resolve_tensor(
    raw: RawTensorInfo,
    alignment: u64,
    data_offset: usize,
    file_len: usize,
) -> Result<TensorInfo> {
    let RawTensorInfo {
        name,
        dims,
        ty,
        offset,
    } = raw;
    let invalid = |reason: String| GgufError::InvalidTensor {
        name: name.clone(),
        reason,
    };

    // Same limit as ggml: element counts are int64 there.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
        })
        .ok_or_else(|| invalid(format!("element count of dims {dims:?} overflows")))?;
    let row_len = dims.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if row_len % block != 0 {
        return Err(invalid(format!(
            "row length {row_len} is not a multiple of the {ty} block size {block}"
        )));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(ty.type_size() as u64)
        .ok_or_else(|| invalid(format!("byte size of dims {dims:?} overflows")))?;
    if offset % alignment != 0 {
        return Err(invalid(format!(
            "data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }

    let start = (data_offset as u64).checked_add(offset);
    let end = start.and_then(|s| s.checked_add(n_bytes));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(invalid(format!(
            "data offset {offset} + {n_bytes} bytes overflows"
        )));
    };
    if end > file_len as u64 {
        return Err(GgufError::TensorOutOfBounds {
            name,
            start,
            end,
            file_len,
        });
    }
    // `end` is within the file, so all of these fit in usize.
    let (Ok(data_start), Ok(n_bytes), Ok(n_elements)) = (
        usize::try_from(start),
        usize::try_from(n_bytes),
        usize::try_from(n_elements),
    ) else {
        return Err(invalid("size does not fit in memory".to_owned()));
    };
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        data_start,
        n_bytes,
        n_elements,
    })
}
