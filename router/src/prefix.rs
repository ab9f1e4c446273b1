//! The fleet's prefix-cache index, sans-IO: which workers report which cached blocks, so
//! the scorer can count how much of a prompt each worker would serve from its cache.
//!
//! Workers report chained block hashes (`meridian_proto::prefix`): the hash of block `i`
//! covers blocks `0..=i`. The router hashes the prompt the same way and, walking its
//! blocks in order, keeps for each worker how many leading blocks it holds, which is
//! what the engine's `match_prefix` will reuse. Built off the request path with each
//! fleet view; a lookup costs one hash-map probe per prompt block plus the hits.

use std::collections::HashMap;

use nohash_hasher::BuildNoHashHasher;

/// Prompt blocks hashed per request at most: workers list at most a few hundred blocks,
/// so longer prompts cannot match further.
pub const MAX_PROMPT_BLOCKS: usize = 1024;

/// Block hash -> the workers (indexes into the view, ascending) that report it.
#[derive(Debug, Clone, Default)]
pub struct PrefixIndex {
    block_size: usize,
    /// Hash -> (start, len) into `workers`. The hashes are already uniform (xxh3), so
    /// the map does not hash them again.
    slots: HashMap<u64, (u32, u32), BuildNoHashHasher<u64>>,
    workers: Vec<u32>,
}

impl PrefixIndex {
    /// Indexes `reports[i] = (block_size, hashes)` of worker `i`. Only workers on the
    /// most common block size are indexed: a hash is only comparable at equal sizes.
    pub fn build<'a>(reports: impl Iterator<Item = (u32, &'a [u64])> + Clone) -> Self {
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        for (size, hashes) in reports.clone() {
            if size > 0 && !hashes.is_empty() {
                *sizes.entry(size).or_default() += 1;
            }
        }
        let Some(block_size) = sizes
            .into_iter()
            .max_by_key(|&(size, n)| (n, std::cmp::Reverse(size)))
            .map(|(size, _)| size)
        else {
            return Self::default();
        };
        let mut pairs: Vec<(u64, u32)> = Vec::new();
        for (i, (size, hashes)) in reports.enumerate() {
            if size == block_size {
                pairs.extend(hashes.iter().map(|&h| (h, i as u32)));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let mut slots =
            HashMap::with_capacity_and_hasher(pairs.len(), BuildNoHashHasher::default());
        let mut workers = Vec::with_capacity(pairs.len());
        let mut start = 0;
        while start < pairs.len() {
            let hash = pairs[start].0;
            let mut end = start;
            while end < pairs.len() && pairs[end].0 == hash {
                workers.push(pairs[end].1);
                end += 1;
            }
            slots.insert(hash, (start as u32, (end - start) as u32));
            start = end;
        }
        Self {
            block_size: block_size as usize,
            slots,
            workers,
        }
    }

    /// Tokens per block of the indexed workers; 0 when no worker reported a cache.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn holders(&self, hash: u64) -> Option<&[u32]> {
        let &(start, len) = self.slots.get(&hash)?;
        self.workers
            .get(start as usize..start as usize + len as usize)
    }

    /// For a prompt whose full blocks hash to `hashes` (in order), writes to `out` each
    /// worker holding at least the first block with the number of leading blocks it
    /// holds, sorted by worker index. `out` is the caller's scratch, reused.
    pub fn matches(&self, hashes: &[u64], out: &mut Vec<(u32, u32)>) {
        out.clear();
        for (i, &hash) in hashes.iter().enumerate() {
            let Some(holders) = self.holders(hash) else {
                break;
            };
            if i == 0 {
                out.extend(holders.iter().map(|&w| (w, 1)));
                continue;
            }
            // Both lists are sorted by worker: advance the workers still matching.
            let depth = i as u32;
            let mut advanced = false;
            let mut j = 0;
            for entry in out.iter_mut().filter(|e| e.1 == depth) {
                while j < holders.len() && holders[j] < entry.0 {
                    j += 1;
                }
                if holders.get(j) == Some(&entry.0) {
                    entry.1 += 1;
                    advanced = true;
                }
            }
            if !advanced {
                break;
            }
        }
    }
}

/// The chained hashes of a prompt's full blocks, at most [`MAX_PROMPT_BLOCKS`].
pub fn prompt_hashes(tokens: &[u32], block_size: usize, out: &mut Vec<u64>) {
    out.clear();
    if block_size == 0 {
        return;
    }
    let usable = tokens.len().min(block_size * MAX_PROMPT_BLOCKS);
    out.extend(meridian_proto::prefix::block_hashes(
        &tokens[..usable],
        block_size,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(tokens: &[u32], bs: usize) -> Vec<u64> {
        let mut out = Vec::new();
        prompt_hashes(tokens, bs, &mut out);
        out
    }

    #[test]
    fn counts_leading_blocks_per_worker() {
        let prompt: Vec<u32> = (0..64).collect();
        let h = hashes(&prompt, 16); // 4 blocks
        let mut other = prompt.clone();
        other[20] = 999; // differs from block 1 on
        let o = hashes(&other, 16);
        let reports: Vec<(u32, Vec<u64>)> = vec![
            (16, h[..3].to_vec()),        // worker 0: 3 leading blocks
            (16, vec![]),                 // worker 1: nothing cached
            (16, o.clone()),              // worker 2: block 0 only (same first block)
            (16, vec![h[0], h[2], h[3]]), // worker 3: lost block 1: only 1 usable
            (32, hashes(&prompt, 32)),    // worker 4: other block size, not indexed
        ];
        let index = PrefixIndex::build(reports.iter().map(|(s, v)| (*s, v.as_slice())));
        assert_eq!(index.block_size(), 16);
        let mut out = Vec::new();
        index.matches(&h, &mut out);
        assert_eq!(out, vec![(0, 3), (2, 1), (3, 1)]);
        // A prompt nobody holds.
        index.matches(&hashes(&[7; 64], 16), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn empty_fleet_has_no_block_size() {
        let index = PrefixIndex::build(std::iter::empty());
        assert_eq!(index.block_size(), 0);
        assert!(index.is_empty());
        let mut out = vec![(1, 1)];
        index.matches(&[1, 2, 3], &mut out);
        assert!(out.is_empty());
        let mut h = vec![1];
        prompt_hashes(&[1, 2, 3], 0, &mut h);
        assert!(h.is_empty());
    }
}
