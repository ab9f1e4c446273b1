//! The prefix-cache block hash, shared by the engine (which keys its KV blocks by it) and
//! the router (which hashes a prompt the same way and counts the leading blocks a
//! worker's `PrefixSummary` reports as cached).
//!
//! A block's hash covers its tokens and, through `parent`, every block before it, so
//! equal hashes mean equal prefixes (up to 64-bit collisions).

/// Parent hash of the first block of a sequence.
pub const ROOT_HASH: u64 = 0x6d65_7269_6469_616e; // "meridian"

/// Hash of one full block of `tokens` following the block whose hash is `parent`.
/// Stable across machines and releases: xxh3-64 over the little-endian token ids,
/// seeded with the parent hash.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut bytes = [0u8; 4 * 64];
    if tokens.len() <= 64 {
        for (chunk, t) in bytes.chunks_exact_mut(4).zip(tokens) {
            chunk.copy_from_slice(&t.to_le_bytes());
        }
        return xxhash_rust::xxh3::xxh3_64_with_seed(&bytes[..4 * tokens.len()], parent);
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(parent);
    for t in tokens {
        hasher.update(&t.to_le_bytes());
    }
    hasher.digest()
}

/// Hashes of every full block of `tokens` (a trailing partial block has none).
pub fn block_hashes(tokens: &[u32], block_size: usize) -> impl Iterator<Item = u64> + '_ {
    let block_size = block_size.max(1);
    tokens
        .chunks_exact(block_size)
        .scan(ROOT_HASH, |parent, block| {
            *parent = block_hash(*parent, block);
            Some(*parent)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_and_are_stable() {
        let tokens: Vec<u32> = (0..40).collect();
        let h: Vec<u64> = block_hashes(&tokens, 16).collect();
        assert_eq!(h.len(), 2, "the partial third block has no hash");
        assert_eq!(h[0], block_hash(ROOT_HASH, &tokens[..16]));
        assert_eq!(h[1], block_hash(h[0], &tokens[16..32]));
        // Same block content after a different prefix: a different hash.
        let mut other = tokens.clone();
        other[0] = 99;
        let h2: Vec<u64> = block_hashes(&other, 16).collect();
        assert_ne!(h[1], h2[1]);
        // Long blocks take the streaming path and agree with themselves.
        let long: Vec<u32> = (0..256).collect();
        assert_eq!(block_hash(1, &long), block_hash(1, &long));
        assert_ne!(block_hash(1, &long), block_hash(2, &long));
        // Pinned value: changing the hash breaks routers and engines of other versions.
        assert_eq!(
            block_hash(ROOT_HASH, &[1, 2, 3]),
            12_114_592_293_893_205_243
        );
    }
}
