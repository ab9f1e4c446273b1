use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::error::GgufError;
use super::parse::{Layout, TensorInfo, parse_layout};
use super::quant::dequantize_row;
use super::types::GgmlType;
use super::value::{FromMeta, MetaArray, MetaValue};

type Result<T> = std::result::Result<T, GgufError>;

/// The bytes of a GGUF file: mapped for real models (hundreds of MB that we
/// only ever read, and mostly touch row by row), owned for in-memory input.
enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn as_slice(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file (v2 or v3, little-endian).
///
/// Invariant: every tensor listed lies within the file's bytes, so views
/// handed out by [`GgufFile::tensor`] need no further checks by callers.
pub struct GgufFile {
    bytes: Backing,
    layout: Layout,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.as_bytes().len())
            .field("version", &self.layout.version)
            .field("metadata", &self.layout.metadata.len())
            .field("tensors", &self.layout.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            // Mapping an empty file fails on some platforms with an opaque
            // error; parsing zero bytes says what is wrong.
            return Self::from_vec(Vec::new());
        }
        // SAFETY: the map is read-only and lives as long as `self`, which
        // hands out only borrows of it. Mapped memory can still change if
        // another process rewrites or truncates the file while it is open;
        // model files are treated as immutable once deployed (written to a
        // temporary name and renamed into place), the same contract
        // llama.cpp relies on when it maps weights.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let layout = parse_layout(&map)?;
        Ok(GgufFile {
            bytes: Backing::Mapped(map),
            layout,
        })
    }

    /// Parses a copy of `bytes`; for tests and small in-memory files.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses `bytes`, taking ownership without copying.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        let layout = parse_layout(&bytes)?;
        Ok(GgufFile {
            bytes: Backing::Owned(bytes),
            layout,
        })
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// Alignment of tensor data, from `general.alignment` or the default 32.
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// Absolute offset of the (aligned) tensor data section.
    pub fn data_offset(&self) -> usize {
        self.layout.data_offset
    }

    pub fn metadata(&self, key: &str) -> Option<&MetaValue> {
        let i = *self.layout.meta_index.get(key)?;
        self.layout.metadata.get(i).map(|(_, v)| v)
    }

    /// All metadata, in file order.
    pub fn metadata_entries(&self) -> impl ExactSizeIterator<Item = (&str, &MetaValue)> {
        self.layout.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value at `key` converted to `T`; an error names the key when it
    /// is missing or has another type. Integer targets accept any integer
    /// type whose value fits, since converters disagree on widths.
    pub fn get<'a, T: FromMeta<'a>>(&'a self, key: &str) -> Result<T> {
        self.get_opt(key)?.ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    /// Like [`GgufFile::get`], but a missing key is `Ok(None)`; a value of
    /// the wrong type is still an error.
    pub fn get_opt<'a, T: FromMeta<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.metadata(key) else {
            return Ok(None);
        };
        T::from_meta(value)
            .map(Some)
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: T::EXPECTED,
                found: value.describe(),
            })
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
    }

    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get(key)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get(key)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
    }

    pub fn get_array(&self, key: &str) -> Result<&MetaArray> {
        self.get(key)
    }

    /// E.g. `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.get(key)
    }

    /// E.g. `tokenizer.ggml.token_type`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.get(key)
    }

    pub fn get_u32_array(&self, key: &str) -> Result<&[u32]> {
        self.get(key)
    }

    /// E.g. `tokenizer.ggml.scores`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.get(key)
    }

    /// `general.architecture`, the prefix of the model's own keys.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Tensor descriptions, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = &TensorInfo> {
        self.layout.tensors.iter()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.layout.tensor_index.get(name)?;
        self.layout.tensors.get(i)
    }

    /// The tensor called `name`, with its data borrowed from the file.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound {
                name: name.to_owned(),
            })?;
        self.view(info)
    }

    /// The view of a tensor listed by [`GgufFile::tensors`].
    pub fn view<'a>(&'a self, info: &'a TensorInfo) -> Result<TensorView<'a>> {
        let bytes = self.as_bytes();
        let start = info.data_start();
        // Checked at parse time; checked again because `info` may come from
        // another file.
        let data = start
            .checked_add(info.n_bytes())
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                name: info.name().to_owned(),
                start: start as u64,
                end: start as u64 + info.n_bytes() as u64,
                file_len: bytes.len(),
            })?;
        Ok(TensorView {
            name: info.name(),
            dims: info.dims(),
            ty: info.ggml_type(),
            data,
        })
    }
}

/// A tensor's description and its raw bytes in the file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    /// ggml order: `dims[0]` is the row length (innermost dimension).
    pub dims: &'a [u64],
    pub ty: GgmlType,
    /// Exactly the tensor's bytes: `n_rows() * ty.row_bytes(row_len())`.
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub fn n_elements(&self) -> usize {
        // Checked at parse time to fit; checked again because the fields
        // are public.
        self.dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .unwrap_or(0)
    }

    /// Elements per row (`dims[0]`); a 0-dimensional tensor is one scalar.
    pub fn row_len(&self) -> usize {
        self.dims
            .first()
            .map_or(1, |&d| usize::try_from(d).unwrap_or(usize::MAX))
    }

    pub fn n_rows(&self) -> usize {
        match self.row_len() {
            0 => 0,
            len => self.n_elements() / len,
        }
    }

    /// The raw bytes of row `row` (e.g. one token's embedding).
    pub fn row(&self, row: usize) -> Result<&'a [u8]> {
        let out_of_range = || GgufError::RowOutOfRange {
            name: self.name.to_owned(),
            row,
            rows: self.n_rows(),
        };
        if row >= self.n_rows() {
            return Err(out_of_range());
        }
        let row_bytes = self.ty.row_bytes(self.row_len()).ok_or_else(out_of_range)?;
        let start = row.checked_mul(row_bytes).ok_or_else(out_of_range)?;
        self.data
            .get(start..)
            .and_then(|rest| rest.get(..row_bytes))
            .ok_or_else(out_of_range)
    }

    /// Dequantizes row `row` into `dst`, which must hold `row_len()` values.
    pub fn dequantize_row(&self, row: usize, dst: &mut [f32]) -> Result<()> {
        dequantize_row(self.ty, self.row(row)?, dst)
    }

    /// The whole tensor as f32; meant for small tensors such as norms.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.n_elements()];
        if self.row_len() > 0 {
            for (r, chunk) in out.chunks_exact_mut(self.row_len()).enumerate() {
                self.dequantize_row(r, chunk)?;
            }
        }
        Ok(out)
    }
}
