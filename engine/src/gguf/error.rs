use std::path::PathBuf;

use super::types::GgmlType;

/// Everything that can go wrong reading a GGUF file or decoding its tensors.
///
/// Parse errors carry the byte offset and the field being read, so a report
/// about a broken model file can be checked with a hex dump.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version}: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },

    #[error("truncated at offset {offset} reading {what}: need {needed} bytes, {available} left")]
    Truncated {
        offset: usize,
        what: String,
        needed: u64,
        available: usize,
    },

    /// A field was read in full but its value is impossible (bad UTF-8, a count
    /// larger than the rest of the file, an unknown metadata type, ...).
    #[error("malformed GGUF at offset {offset} reading {what}: {reason}")]
    Malformed {
        offset: usize,
        what: String,
        reason: String,
    },

    #[error("unknown ggml type id {id} for tensor '{tensor}' (at offset {offset})")]
    UnknownGgmlType {
        id: u32,
        tensor: String,
        offset: usize,
    },

    #[error("duplicate metadata key '{key}'")]
    DuplicateKey { key: String },

    #[error("duplicate tensor name '{name}'")]
    DuplicateTensor { name: String },

    #[error("invalid tensor '{name}': {reason}")]
    InvalidTensor { name: String, reason: String },

    #[error("tensor '{name}' data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: usize,
    },

    #[error("metadata key '{key}' not found")]
    MissingKey { key: String },

    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("tensor '{name}' not found")]
    TensorNotFound { name: String },

    #[error("row {row} out of range for tensor '{name}' with {rows} rows")]
    RowOutOfRange {
        name: String,
        row: usize,
        rows: usize,
    },

    #[error("dequantizing {ty}: {reason}")]
    DequantLength { ty: GgmlType, reason: String },

    #[error("dequantizing {ty} is not supported")]
    UnsupportedDequant { ty: GgmlType },
}
