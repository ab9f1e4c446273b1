//! Test-only GGUF writer: builds small valid files in memory, and the raw
//! pieces to hand-craft broken ones.

use super::types::GgmlType;
use super::value::{MetaArray, MetaValue};

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Magic, version and the two counts.
pub(crate) fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    put_u32(&mut out, version);
    put_u64(&mut out, n_tensors);
    put_u64(&mut out, n_kv);
    out
}

/// Writes a value without its type tag.
pub(crate) fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(a) => put_array(out, a),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &MetaArray) {
    put_u32(out, a.elem_type().id());
    put_u64(out, a.len() as u64);
    fn each<T: Clone>(out: &mut Vec<u8>, v: &[T], f: fn(T) -> MetaValue) {
        for x in v {
            put_value(out, &f(x.clone()));
        }
    }
    match a {
        MetaArray::U8(v) => each(out, v, MetaValue::U8),
        MetaArray::I8(v) => each(out, v, MetaValue::I8),
        MetaArray::U16(v) => each(out, v, MetaValue::U16),
        MetaArray::I16(v) => each(out, v, MetaValue::I16),
        MetaArray::U32(v) => each(out, v, MetaValue::U32),
        MetaArray::I32(v) => each(out, v, MetaValue::I32),
        MetaArray::F32(v) => each(out, v, MetaValue::F32),
        MetaArray::Bool(v) => each(out, v, MetaValue::Bool),
        MetaArray::String(v) => each(out, v, MetaValue::String),
        MetaArray::Array(v) => each(out, v, MetaValue::Array),
        MetaArray::U64(v) => each(out, v, MetaValue::U64),
        MetaArray::I64(v) => each(out, v, MetaValue::I64),
        MetaArray::F64(v) => each(out, v, MetaValue::F64),
    }
}

/// A key/value entry: key, type tag, value.
pub(crate) fn put_kv(out: &mut Vec<u8>, key: &str, v: &MetaValue) {
    put_str(out, key);
    put_u32(out, v.meta_type().id());
    put_value(out, v);
}

pub(crate) struct TestTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

/// Builds a valid file: tensor data packed in order, each at the next
/// aligned offset, and the file ending right after the last tensor (so any
/// truncation cuts something).
pub(crate) struct GgufBuilder {
    pub version: u32,
    pub kvs: Vec<(String, MetaValue)>,
    pub tensors: Vec<TestTensor>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        GgufBuilder {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    pub fn kv(mut self, key: &str, v: MetaValue) -> Self {
        self.kvs.push((key.to_owned(), v));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push(TestTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            type_id: ty.id(),
            data,
        });
        self
    }

    fn alignment(&self) -> usize {
        self.kvs
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", MetaValue::U32(a)) => Some(*a as usize),
                _ => None,
            })
            .unwrap_or(32)
    }

    pub fn build(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = header(
            self.version,
            self.tensors.len() as u64,
            self.kvs.len() as u64,
        );
        for (k, v) in &self.kvs {
            put_kv(&mut out, k, v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.type_id);
            put_u64(&mut out, offset as u64);
            offsets.push(offset);
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        let data_start = out.len().next_multiple_of(align);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// A small file with metadata of every type (nested arrays included) and
/// three tensors of different types.
pub(crate) fn sample_builder() -> GgufBuilder {
    GgufBuilder::new()
        .kv("general.architecture", MetaValue::String("llama".into()))
        .kv("t.u8", MetaValue::U8(200))
        .kv("t.i8", MetaValue::I8(-100))
        .kv("t.u16", MetaValue::U16(60000))
        .kv("t.i16", MetaValue::I16(-30000))
        .kv("t.u32", MetaValue::U32(4_000_000_000))
        .kv("t.i32", MetaValue::I32(-2_000_000_000))
        .kv("t.f32", MetaValue::F32(1.5e-5))
        .kv("t.bool", MetaValue::Bool(true))
        .kv("t.string", MetaValue::String("héllo ✓".into()))
        .kv("t.u64", MetaValue::U64(u64::MAX - 1))
        .kv("t.i64", MetaValue::I64(i64::MIN + 1))
        .kv("t.f64", MetaValue::F64(-2.5e300))
        .kv(
            "t.tokens",
            MetaValue::Array(MetaArray::String(vec![
                "<s>".into(),
                "".into(),
                "Ġthe".into(),
            ])),
        )
        .kv(
            "t.token_type",
            MetaValue::Array(MetaArray::I32(vec![3, 1, -1])),
        )
        .kv(
            "t.scores",
            MetaValue::Array(MetaArray::F32(vec![0.0, -1.25, 7.5])),
        )
        .kv("t.bytes", MetaValue::Array(MetaArray::U8(vec![1, 2, 255])))
        .kv(
            "t.flags",
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
        )
        .kv("t.empty", MetaValue::Array(MetaArray::U64(vec![])))
        .kv(
            "t.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U32(vec![1, 2]),
                MetaArray::String(vec!["x".into()]),
                MetaArray::Array(vec![MetaArray::F64(vec![0.5]), MetaArray::I16(vec![])]),
                MetaArray::I8(vec![]),
            ])),
        )
        .tensor(
            "norm",
            &[4],
            GgmlType::F32,
            f32_bytes(&[1.0, -2.0, 0.5, 8.0]),
        )
        .tensor("emb", &[32, 3], GgmlType::Q8_0, q8_0_rows(3))
        .tensor("proj", &[32, 2], GgmlType::Q4_1, q4_1_rows(2))
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Row r of the result dequantizes to `(i - 16) * (r + 1) / 4` at index i.
pub(crate) fn q8_0_rows(rows: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..rows {
        let d = half::f16::from_f32((r + 1) as f32 / 4.0);
        out.extend_from_slice(&d.to_le_bytes());
        out.extend((0..32).map(|i| (i - 16i8) as u8));
    }
    out
}

/// Row r dequantizes to `(i % 16) * 0.5 - r` at index i.
pub(crate) fn q4_1_rows(rows: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..rows {
        out.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        out.extend_from_slice(&half::f16::from_f32(-(r as f32)).to_le_bytes());
        out.extend((0..16u8).map(|j| j | (j << 4)));
    }
    out
}
