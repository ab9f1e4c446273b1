//! Where a backend reads weights from: one interface over GGUF files and safetensors
//! checkpoints, in GGUF's tensor names and dimension order.

use std::borrow::Cow;

use crate::EngineError;
use crate::gguf::{GgmlType, GgufFile};

/// One tensor as stored, in ggml's dimension order (`dims[0]` is the row length).
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl RawTensor<'_> {
    /// Values per row (input features of a weight matrix).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Rows (output features of a weight matrix).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    /// Every value as f32 (norm weights, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>, EngineError> {
        let n = self.row_len() * self.n_rows();
        let mut out = vec![0f32; n];
        crate::gguf::dequantize_row(self.ty, &self.data, &mut out)?;
        Ok(out)
    }
}

/// A checkpoint's tensors, named as in GGUF (`token_embd.weight`,
/// `blk.N.attn_q.weight`, ...).
pub trait WeightSource {
    fn tensor(&self, name: &str) -> Result<RawTensor<'_>, EngineError>;
    fn has(&self, name: &str) -> bool;
}

impl WeightSource for GgufFile {
    fn tensor(&self, name: &str) -> Result<RawTensor<'_>, EngineError> {
        let view = GgufFile::tensor(self, name)?;
        Ok(RawTensor {
            name: name.to_string(),
            ty: view.ty,
            dims: view.dims.iter().map(|&d| d as usize).collect(),
            data: Cow::Borrowed(view.data),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }
}
