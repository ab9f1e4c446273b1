//! Property test: whatever is done to a valid file, parsing returns Ok or
//! Err without panicking, and a file that parses only hands out in-bounds
//! tensor data. (A cargo-fuzz target can reuse `check_any_input`.)

use proptest::prelude::*;
use proptest::sample::Index;

use super::testutil::sample_builder;
use super::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: Index,
        mask: u8,
    },
    /// Overwrites 8 bytes with a value likely to be a bad count, length or
    /// offset (byte flips alone rarely produce one).
    PutU64 {
        at: Index,
        value: u64,
    },
    Truncate {
        at: Index,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let nasty = prop_oneof![
        Just(0u64),
        Just(1),
        Just(4),
        Just(u64::MAX),
        Just(u64::MAX - 31),
        Just(1 << 32),
        Just(1 << 62),
        Just(u64::from(u32::MAX)),
        0u64..4096,
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        3 => (any::<Index>(), nasty).prop_map(|(at, value)| Mutation::PutU64 { at, value }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { at, mask } => {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::PutU64 { at, value } => {
            let i = at.index(bytes.len());
            let end = (i + 8).min(bytes.len());
            bytes[i..end].copy_from_slice(&value.to_le_bytes()[..end - i]);
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(bytes.len())),
        Mutation::Insert { at, bytes: extra } => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = at.index(bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
    }
}

/// Parses `bytes` and exercises everything a caller might touch.
pub(crate) fn check_any_input(bytes: &[u8]) {
    let Ok(f) = GgufFile::parse(bytes) else {
        return;
    };
    let file = f.as_bytes();
    let range = file.as_ptr_range();
    for (key, value) in f.metadata_entries() {
        let _ = value.describe();
        let _ = f.get::<u32>(key);
        let _ = f.get::<&[String]>(key);
    }
    for info in f.tensors() {
        let view = match f.tensor(info.name()) {
            Ok(v) => v,
            Err(e) => panic!("listed tensor {} has no view: {e}", info.name()),
        };
        let data = view.data.as_ptr_range();
        assert!(
            range.start <= data.start && data.end <= range.end,
            "{} out of bounds",
            view.name
        );
        assert_eq!(view.data.len(), info.n_bytes());
        assert!(info.data_start() + info.n_bytes() <= file.len());
        // Dequantizing may fail (unsupported type) but must not panic.
        if view.n_rows() > 0 && view.row_len() <= 1 << 16 {
            let mut row = vec![0f32; view.row_len()];
            let _ = view.dequantize_row(view.n_rows() - 1, &mut row);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn mutated_files_never_panic(mutations in prop::collection::vec(mutation(), 1..5)) {
        let mut bytes = sample_builder().build();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_any_input(&bytes);
    }
}

#[test]
fn unmutated_sample_passes_the_checks() {
    let bytes = sample_builder().build();
    assert!(GgufFile::parse(&bytes).is_ok());
    check_any_input(&bytes);
}
