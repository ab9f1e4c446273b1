use super::testutil::*;
use super::*;

type TestResult = Result<(), GgufError>;

fn parse_err(bytes: &[u8]) -> GgufError {
    match GgufFile::parse(bytes) {
        Ok(f) => panic!("expected an error, parsed {f:?}"),
        Err(e) => e,
    }
}

fn assert_msg(err: &GgufError, needle: &str) {
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error {msg:?} does not contain {needle:?}"
    );
}

#[test]
fn v3_round_trip_every_value_and_tensor() -> TestResult {
    let builder = sample_builder();
    let bytes = builder.build();
    let f = GgufFile::parse(&bytes)?;
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);

    let entries: Vec<_> = f.metadata_entries().collect();
    assert_eq!(entries.len(), builder.kvs.len());
    for ((key, value), (want_key, want)) in entries.iter().zip(&builder.kvs) {
        assert_eq!(key, want_key);
        assert_eq!(*value, want, "{key}");
        assert_eq!(f.metadata(key), Some(want));
    }

    assert_eq!(f.architecture()?, "llama");
    assert_eq!(f.get::<u8>("t.u8")?, 200);
    assert_eq!(f.get::<i8>("t.i8")?, -100);
    assert_eq!(f.get::<u16>("t.u16")?, 60000);
    assert_eq!(f.get::<i16>("t.i16")?, -30000);
    assert_eq!(f.get_u32("t.u32")?, 4_000_000_000);
    assert_eq!(f.get_i32("t.i32")?, -2_000_000_000);
    assert_eq!(f.get_f32("t.f32")?, 1.5e-5);
    assert!(f.get_bool("t.bool")?);
    assert_eq!(f.get_str("t.string")?, "héllo ✓");
    assert_eq!(f.get_u64("t.u64")?, u64::MAX - 1);
    assert_eq!(f.get::<i64>("t.i64")?, i64::MIN + 1);
    assert_eq!(f.get::<f64>("t.f64")?, -2.5e300);
    assert_eq!(f.get_str_array("t.tokens")?, ["<s>", "", "Ġthe"]);
    assert_eq!(f.get_i32_array("t.token_type")?, [3, 1, -1]);
    assert_eq!(f.get_f32_array("t.scores")?, [0.0, -1.25, 7.5]);
    assert_eq!(f.get::<&[u8]>("t.bytes")?, [1, 2, 255]);
    assert_eq!(f.get::<&[bool]>("t.flags")?, [true, false]);
    assert!(f.get::<&[u64]>("t.empty")?.is_empty());
    let nested = f.get::<&[MetaArray]>("t.nested")?;
    assert_eq!(nested.len(), 4);
    assert_eq!(nested[0], MetaArray::U32(vec![1, 2]));
    assert_eq!(
        nested[2],
        MetaArray::Array(vec![MetaArray::F64(vec![0.5]), MetaArray::I16(vec![])])
    );
    assert_eq!(nested[3].elem_type(), MetaType::I8);

    let names: Vec<_> = f.tensors().map(|t| t.name()).collect();
    assert_eq!(names, ["norm", "emb", "proj"]);
    for (info, want) in f.tensors().zip(&builder.tensors) {
        let view = f.tensor(info.name())?;
        assert_eq!(view.dims, want.dims.as_slice());
        assert_eq!(view.ty.id(), want.type_id);
        assert_eq!(view.data, want.data.as_slice());
        assert_eq!(info.offset() % 32, 0);
        assert_eq!(info.data_start(), f.data_offset() + info.offset() as usize);
    }

    let norm = f.tensor("norm")?;
    assert_eq!(norm.to_f32_vec()?, [1.0, -2.0, 0.5, 8.0]);
    let emb = f.tensor("emb")?;
    assert_eq!(
        (emb.ty, emb.row_len(), emb.n_rows(), emb.n_elements()),
        (GgmlType::Q8_0, 32, 3, 96)
    );
    let mut row = [0f32; 32];
    emb.dequantize_row(2, &mut row)?;
    for (i, v) in row.iter().enumerate() {
        assert_eq!(*v, (i as f32 - 16.0) * 0.75);
    }
    let proj = f.tensor("proj")?;
    proj.dequantize_row(1, &mut row)?;
    for (i, v) in row.iter().enumerate() {
        assert_eq!(*v, (i % 16) as f32 * 0.5 - 1.0);
    }
    assert!(matches!(
        emb.row(3),
        Err(GgufError::RowOutOfRange {
            row: 3,
            rows: 3,
            ..
        })
    ));
    assert!(matches!(
        f.tensor("nope"),
        Err(GgufError::TensorNotFound { .. })
    ));
    Ok(())
}

#[test]
fn v2_parses_like_v3() -> TestResult {
    let bytes = sample_builder().version(2).build();
    let f = GgufFile::parse(&bytes)?;
    assert_eq!(f.version(), 2);
    assert_eq!(f.get_str_array("t.tokens")?.len(), 3);
    assert_eq!(f.tensor("proj")?.dims, [32, 2]);
    Ok(())
}

#[test]
fn open_maps_a_file() -> TestResult {
    let path = std::env::temp_dir().join(format!("meridian-gguf-test-{}.gguf", std::process::id()));
    let bytes = sample_builder().build();
    std::fs::write(&path, &bytes).map_err(|source| GgufError::Io {
        path: path.clone(),
        source,
    })?;
    let opened = GgufFile::open(&path);
    let _ = std::fs::remove_file(&path);
    let f = opened?;
    assert_eq!(f.as_bytes(), bytes.as_slice());
    assert_eq!(f.tensor("emb")?.data.len(), 3 * 34);

    let missing = GgufFile::open("/nonexistent/model.gguf").expect_err("missing file");
    assert_msg(&missing, "/nonexistent/model.gguf");
    Ok(())
}

#[test]
fn getters_name_key_and_types() -> TestResult {
    let f = GgufFile::parse(&sample_builder().build())?;
    assert_msg(
        &f.get_u32("llama.block_count").expect_err("missing"),
        "'llama.block_count' not found",
    );
    assert_eq!(f.get_opt::<u32>("llama.block_count")?, None);
    assert_msg(
        &f.get_u32("t.string").expect_err("string"),
        "metadata key 't.string': expected u32, found string of 10 bytes",
    );
    assert_msg(
        &f.get_f32_array("t.token_type").expect_err("i32 array"),
        "expected array of f32, found array of i32 (3 elements)",
    );
    assert_msg(
        &f.get_f32("t.u8").expect_err("int as float"),
        "expected f32, found u8 200",
    );
    // Integers widen when the value fits, and only then.
    assert_eq!(f.get_u64("t.u8")?, 200);
    assert_eq!(f.get_i32("t.u16")?, 60000);
    assert_msg(
        &f.get_u32("t.i32").expect_err("negative"),
        "expected u32, found i32 -2000000000",
    );
    assert_msg(
        &f.get::<i8>("t.u8").expect_err("too big"),
        "expected i8, found u8 200",
    );
    assert!(f.get_opt::<&str>("t.u8").is_err());
    Ok(())
}

#[test]
fn alignment_is_read_and_checked() -> TestResult {
    let bytes = sample_builder()
        .kv("general.alignment", MetaValue::U32(64))
        .build();
    let f = GgufFile::parse(&bytes)?;
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor("proj")?.data, q4_1_rows(2).as_slice());

    for (bad, why) in [
        (MetaValue::U32(0), "alignment 0 is not a power of two"),
        (MetaValue::U32(48), "alignment 48 is not a power of two"),
        (MetaValue::U64(32), "expected u32, found u64 32"),
    ] {
        let mut b = header(3, 0, 1);
        put_kv(&mut b, "general.alignment", &bad);
        let err = parse_err(&b);
        assert_msg(&err, "general.alignment");
        assert_msg(&err, why);
    }
    Ok(())
}

#[test]
fn header_errors() {
    assert_msg(&parse_err(b""), "truncated at offset 0 reading magic");
    assert!(matches!(
        parse_err(b"GGML\x03\0\0\0"),
        GgufError::BadMagic { .. }
    ));
    let v1 = parse_err(&header(1, 0, 0));
    assert!(matches!(
        v1,
        GgufError::UnsupportedVersion { version: 1, .. }
    ));
    assert_msg(&v1, "v1");
    assert_msg(&parse_err(&header(4, 0, 0)), "newer than this reader");
    assert_msg(&parse_err(&header(3u32.swap_bytes(), 0, 0)), "big-endian");
    assert_msg(
        &parse_err(&b"GGUF\x03\0\0\0\0\0"[..]),
        "truncated at offset 8 reading tensor count",
    );
    // A header alone, with nothing in it, is a valid empty file.
    let f = GgufFile::parse(&header(3, 0, 0)).expect("empty file");
    assert_eq!((f.tensors().len(), f.metadata_entries().len()), (0, 0));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_builder().build();
    for len in 0..bytes.len() {
        let err = parse_err(&bytes[..len]);
        // Cutting into the data section leaves a header that points past
        // the end; cutting the header ends a read early, or leaves too few
        // bytes for a count read before it.
        let in_data = matches!(err, GgufError::TensorOutOfBounds { .. });
        let in_header = match &err {
            GgufError::Truncated { offset, .. } => *offset <= len,
            GgufError::Malformed { reason, .. } => reason.contains("cannot fit"),
            _ => false,
        };
        assert!(in_data || in_header, "len {len}: {err}");
    }
}

#[test]
fn truncation_names_offset_and_field() {
    let bytes = sample_builder().build();
    // The length field of tensor info 1's name sits just before "emb".
    let at = bytes.windows(3).position(|w| w == b"emb").expect("name") - 8;
    let err = parse_err(&bytes[..at + 3]);
    assert_eq!(
        err.to_string(),
        format!("truncated at offset {at} reading tensor info 1 name length: need 8 bytes, 3 left")
    );
    let err = parse_err(&bytes[..at + 8 + 3 + 4 + 2]);
    assert_msg(&err, "reading tensor info 1 ('emb') dim 0");
}

#[test]
fn absurd_counts_and_lengths_are_refused_without_allocating() {
    // A key claiming u64::MAX bytes.
    let mut b = header(3, 0, 1);
    put_u64(&mut b, u64::MAX);
    b.extend_from_slice(&[0; 16]);
    assert_msg(
        &parse_err(&b),
        "truncated at offset 32 reading metadata 0 key: need 18446744073709551615 bytes, 16 left",
    );

    // An array claiming 2^61 elements.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "k");
    put_u32(&mut b, MetaType::Array.id());
    put_u32(&mut b, MetaType::U32.id());
    put_u64(&mut b, 1 << 61);
    assert_msg(
        &parse_err(&b),
        "metadata 0 ('k') value array length: count 2305843009213693952 cannot fit",
    );

    // Counts in the header.
    assert_msg(
        &parse_err(&header(3, u64::MAX, 0)),
        "tensor count: count 18446744073709551615",
    );
    assert_msg(
        &parse_err(&header(3, 0, 1 << 40)),
        "metadata count: count 1099511627776",
    );
}

#[test]
fn bad_metadata_values() {
    let kv = |ty: u32, value: &[u8]| {
        let mut b = header(3, 0, 1);
        put_str(&mut b, "key");
        put_u32(&mut b, ty);
        b.extend_from_slice(value);
        b
    };
    assert_msg(&parse_err(&kv(13, &[])), "unknown metadata type id 13");
    assert_msg(&parse_err(&kv(7, &[2])), "bool byte is 2");
    assert_msg(
        &parse_err(&kv(8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xC3, 0x28])),
        "invalid UTF-8",
    );
    assert_msg(
        &parse_err(&kv(6, &[0, 0])),
        "reading metadata 0 ('key') value: need 4 bytes, 2 left",
    );

    // Array of arrays of arrays ... deeper than any file needs.
    let mut nest = Vec::new();
    for _ in 0..40 {
        put_u32(&mut nest, MetaType::Array.id());
        put_u64(&mut nest, 1);
    }
    let mut b = header(3, 0, 1);
    put_str(&mut b, "deep");
    put_u32(&mut b, MetaType::Array.id());
    b.extend_from_slice(&nest);
    assert_msg(&parse_err(&b), "nested deeper than 16");

    let dup = GgufBuilder::new()
        .kv("a", MetaValue::U8(1))
        .kv("a", MetaValue::U8(2))
        .build();
    assert!(matches!(parse_err(&dup), GgufError::DuplicateKey { key } if key == "a"));
}

#[test]
fn bad_tensor_infos() {
    let one = |dims: &[u64], ty: GgmlType, data: Vec<u8>| {
        GgufBuilder::new().tensor("w", dims, ty, data).build()
    };

    // The ggml type id of the only tensor: after the header, the name
    // length, "w", the dimension count and one dim; the offset follows it.
    let info = 24 + 8 + 1 + 4 + 8;
    let mut b = one(&[4], GgmlType::F32, vec![0; 16]);
    b[info..info + 4].copy_from_slice(&99u32.to_le_bytes());
    let err = parse_err(&b);
    assert!(
        matches!(err, GgufError::UnknownGgmlType { id: 99, ref tensor, offset } if tensor == "w" && offset == info)
    );

    assert_msg(
        &parse_err(&one(&[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])),
        "5 dimensions, ggml allows at most 4",
    );
    assert_msg(
        &parse_err(&one(&[1 << 40, 1 << 40], GgmlType::F32, vec![])),
        "element count of dims [1099511627776, 1099511627776] overflows",
    );
    assert_msg(
        &parse_err(&one(&[48], GgmlType::Q4_0, vec![0; 27])),
        "row length 48 is not a multiple of the Q4_0 block size 32",
    );
    // Eight f32 claimed, four present.
    let short = one(&[8], GgmlType::F32, vec![0; 16]);
    assert_eq!(short.len(), 64 + 16);
    assert_msg(
        &parse_err(&short),
        "tensor 'w' data [64, 96) lies outside the file (80 bytes)",
    );

    // Offsets: misaligned, and so large that adding them overflows.
    let mut b = one(&[4], GgmlType::F32, vec![0; 16]);
    b[info + 4..info + 12].copy_from_slice(&4u64.to_le_bytes());
    assert_msg(
        &parse_err(&b),
        "data offset 4 is not a multiple of the alignment 32",
    );
    b[info + 4..info + 12].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert_msg(&parse_err(&b), "overflows");

    let dup = GgufBuilder::new()
        .tensor("w", &[1], GgmlType::F32, vec![0; 4])
        .tensor("w", &[1], GgmlType::F32, vec![0; 4])
        .build();
    assert!(matches!(parse_err(&dup), GgufError::DuplicateTensor { name } if name == "w"));
}

#[test]
fn zero_and_scalar_tensors() -> TestResult {
    let bytes = GgufBuilder::new()
        .tensor("empty", &[0, 5], GgmlType::Q4K, vec![])
        .tensor("scalar", &[], GgmlType::F32, 2.5f32.to_le_bytes().to_vec())
        .build();
    let f = GgufFile::parse(&bytes)?;
    let empty = f.tensor("empty")?;
    assert_eq!((empty.n_elements(), empty.n_rows()), (0, 0));
    assert!(empty.to_f32_vec()?.is_empty());
    let scalar = f.tensor("scalar")?;
    assert_eq!(scalar.to_f32_vec()?, [2.5]);
    Ok(())
}

/// Reference values below are printed as f64; comparing in f64 keeps them exact.
fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

#[test]
fn real_smollm2_file() -> TestResult {
    let real_model = crate::testing::real_model_path();
    let f = GgufFile::open(&real_model)?;
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture()?, "llama");
    assert_eq!(f.get_u32("llama.block_count")?, 30);
    assert_eq!(f.get_u32("llama.embedding_length")?, 576);
    assert_eq!(f.get_u32("llama.attention.head_count")?, 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv")?, 3);
    assert_eq!(f.get_f32("llama.rope.freq_base")?, 100000.0);
    let tokens = f.get_str_array("tokenizer.ggml.tokens")?;
    assert_eq!(tokens.len(), 49152);
    assert_eq!(f.get_i32_array("tokenizer.ggml.token_type")?.len(), 49152);
    assert_eq!(f.get_str_array("tokenizer.ggml.merges")?.len(), 48900);
    assert_eq!(f.get_str("tokenizer.ggml.model")?, "gpt2");
    assert_eq!(
        tokens[f.get_u32("tokenizer.ggml.eos_token_id")? as usize],
        "<|im_end|>"
    );
    assert_eq!(f.tensors().len(), 272);

    let mut counts = std::collections::BTreeMap::new();
    for info in f.tensors() {
        *counts.entry(info.ggml_type().name()).or_insert(0) += 1;
        assert_eq!(f.view(info)?.data.len(), info.n_bytes());
    }
    println!("{}: ggml types {counts:?}", real_model.display());
    assert_eq!(counts.get("Q4_1"), Some(&210));

    // Reference values from the gguf Python package's dequantize().
    let emb = f.tensor("token_embd.weight")?;
    assert_eq!(emb.dims, [576, 49152]);
    assert_eq!(emb.ty, GgmlType::Q8_0);
    let mut row = vec![0f32; 576];
    emb.dequantize_row(100, &mut row)?;
    assert!(row.iter().all(|v| v.is_finite()) && row.iter().any(|&v| v != 0.0));
    assert_eq!(
        widen(&row[..4]),
        [
            0.019052505493164062,
            -0.08437538146972656,
            -0.1660289764404297,
            -0.10070610046386719
        ]
    );
    let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - 2.175539016723633).abs() < 1e-4, "{sum}");

    let q = f.tensor("blk.0.attn_q.weight")?;
    assert_eq!(q.ty, GgmlType::Q4_1);
    q.dequantize_row(1, &mut row)?;
    assert_eq!(
        widen(&row[..4]),
        [
            -0.1173095703125,
            -0.1173095703125,
            -0.19281005859375,
            0.26019287109375
        ]
    );

    let norm = f.tensor("blk.0.attn_norm.weight")?.to_f32_vec()?;
    assert_eq!(
        widen(&norm[..3]),
        [0.01397705078125, 0.0238037109375, -0.019775390625]
    );
    Ok(())
}
