//! Reader for GGUF model files (llama.cpp's format): header, metadata,
//! tensor descriptions, zero-copy tensor data from a memory map, and scalar
//! dequantization of the common ggml block formats.
//!
//! Invariants: parsing never panics and never allocates more than a small
//! multiple of the input's size, whatever the input; every tensor of a
//! parsed [`GgufFile`] lies within the file. This module depends on nothing
//! else in the engine.

mod error;
mod parse;
mod quant;
mod reader;
mod types;
mod value;

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod reader_tests;

#[cfg(test)]
mod fuzz_tests;

pub use error::GgufError;
pub use parse::TensorInfo;
pub use quant::dequantize_row;
pub use reader::{GgufFile, TensorView};
pub use types::GgmlType;
pub use value::{FromMeta, MetaArray, MetaType, MetaValue};
