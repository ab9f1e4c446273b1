use meridian_proto::prefix::block_hashes;
use proptest::prelude::*;

use super::*;

fn hashes(tokens: &[u32], bs: usize) -> Vec<u64> {
    block_hashes(tokens, bs).collect()
}

#[test]
fn allocate_until_full_then_release() {
    let mut bm = BlockManager::new(3, 4);
    let a: Vec<BlockId> = (0..3).map(|_| bm.allocate().unwrap()).collect();
    assert_eq!(a, vec![0, 1, 2]);
    assert!(bm.allocate().is_none());
    bm.release(&a[..1]);
    assert_eq!(bm.available_blocks(), 1);
    assert_eq!(bm.allocate(), Some(0));
}

#[test]
fn prefix_blocks_are_shared_and_evicted_lru() {
    let mut bm = BlockManager::new(4, 4);
    let prompt: Vec<u32> = (0..10).collect();
    let h = hashes(&prompt, 4);
    // First sequence computes two full blocks and a partial one.
    let seq1: Vec<BlockId> = (0..3).map(|_| bm.allocate().unwrap()).collect();
    bm.register_full(seq1[0], h[0]);
    bm.register_full(seq1[1], h[1]);
    // A second sequence with the same prompt reuses both full blocks.
    let shared = bm.match_prefix(&prompt, prompt.len() - 1).blocks;
    assert_eq!(shared, seq1[..2]);
    assert_eq!(bm.stats().hit_tokens, 8);
    // Both finish: the full blocks stay cached, the partial one is free.
    bm.release(&seq1);
    bm.release(&shared);
    assert_eq!(bm.available_blocks(), 4);
    // Still findable after release.
    let again = bm.match_prefix(&prompt, 9).blocks;
    assert_eq!(again.len(), 2);
    bm.release(&again);
    // Exhaust memory: free blocks go first, then the LRU cached block (the later one,
    // released first because releases run in reverse).
    let fresh: Vec<BlockId> = (0..3).map(|_| bm.allocate().unwrap()).collect();
    assert_eq!(bm.stats().evictions, 1);
    assert!(
        !fresh.contains(&seq1[0]),
        "block 0 of the prefix survives longest"
    );
    let partial = bm.match_prefix(&prompt, 9).blocks;
    assert_eq!(partial, vec![seq1[0]]);
}

#[test]
fn match_respects_the_limit() {
    let mut bm = BlockManager::new(4, 4);
    let prompt: Vec<u32> = (0..8).collect();
    let h = hashes(&prompt, 4);
    let b: Vec<BlockId> = (0..2).map(|_| bm.allocate().unwrap()).collect();
    bm.register_full(b[0], h[0]);
    bm.register_full(b[1], h[1]);
    // The whole prompt is cached, but the last token must be computed for logits.
    let m = bm.match_prefix(&prompt, 7);
    assert_eq!(m.blocks.len(), 1);
    assert_eq!(m.last_hash, h[0]);
}

#[test]
fn cached_hashes_lists_recent_first() {
    let mut bm = BlockManager::new(4, 2);
    let h = hashes(&[1, 2, 3, 4], 2);
    let b: Vec<BlockId> = (0..2).map(|_| bm.allocate().unwrap()).collect();
    bm.register_full(b[0], h[0]);
    bm.register_full(b[1], h[1]);
    bm.release(&b);
    // Released in reverse: block 1 first (older), block 0 last (most recent).
    assert_eq!(bm.cached_hashes(8), vec![h[0], h[1]]);
    assert_eq!(bm.cached_hashes(1), vec![h[0]]);
}

proptest! {
    /// Random allocate / share / release sequences: reference counts never go wrong,
    /// a block is never handed to two owners unless shared through the prefix cache,
    /// and every block is accounted for.
    #[test]
    fn accounting_holds(ops in proptest::collection::vec((0u8..4, 0u32..6), 1..200)) {
        let total = 8;
        let mut bm = BlockManager::new(total, 2);
        let mut owners: Vec<Vec<BlockId>> = Vec::new();
        for (op, arg) in ops {
            match op {
                0 => if let Some(b) = bm.allocate() {
                    prop_assert!(!owners.iter().flatten().any(|&x| x == b), "block {b} handed out twice");
                    owners.push(vec![b]);
                },
                1 => if !owners.is_empty() {
                    let i = arg as usize % owners.len();
                    let seq = owners.swap_remove(i);
                    bm.release(&seq);
                },
                2 => if let Some(seq) = owners.last() {
                    let tokens = [arg, arg + 1];
                    bm.register_full(seq[0], hashes(&tokens, 2)[0]);
                },
                _ => {
                    let tokens = [arg, arg + 1, 9];
                    let shared = bm.match_prefix(&tokens, 2).blocks;
                    if !shared.is_empty() { owners.push(shared); }
                }
            }
            let referenced: std::collections::HashSet<BlockId> = owners.iter().flatten().copied().collect();
            prop_assert_eq!(bm.available_blocks() + referenced.len(), total);
        }
    }
}
