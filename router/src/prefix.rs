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
///
/// Consecutive blocks of a cached prompt are usually held by exactly the same workers,
/// so worker lists are stored once and shared by every hash that has the same list; a
/// lookup walks a list only where it changes, not once per block.
#[derive(Debug, Clone, Default)]
pub struct PrefixIndex {
    block_size: usize,
    /// Workers in the view this index was built for.
    n_workers: usize,
    /// Hash -> list id. The hashes are already uniform (xxh3), so the map does not hash
    /// them again.
    slots: HashMap<u64, u32, BuildNoHashHasher<u64>>,
    /// List id -> (start, len) into `workers`.
    lists: Vec<(u32, u32)>,
    workers: Vec<u32>,
}

impl PrefixIndex {
    /// Indexes `reports[i] = (block_size, hashes)` of worker `i`. Only workers on the
    /// most common block size are indexed: a hash is only comparable at equal sizes.
    pub fn build<'a>(reports: impl Iterator<Item = (u32, &'a [u64])> + Clone) -> Self {
        let n_workers = reports.clone().count();
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
            return Self {
                n_workers,
                ..Self::default()
            };
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
            HashMap::with_capacity_and_hasher(pairs.len() / 4, BuildNoHashHasher::default());
        let mut list_ids: HashMap<&[u32], u32> = HashMap::new();
        let holders: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        let mut lists = Vec::new();
        let mut workers = Vec::new();
        let mut start = 0;
        while start < pairs.len() {
            let hash = pairs[start].0;
            let mut end = start;
            while end < pairs.len() && pairs[end].0 == hash {
                end += 1;
            }
            let list = &holders[start..end];
            let id = *list_ids.entry(list).or_insert_with(|| {
                lists.push((workers.len() as u32, list.len() as u32));
                workers.extend_from_slice(list);
                (lists.len() - 1) as u32
            });
            slots.insert(hash, id);
            start = end;
        }
        Self {
            block_size: block_size as usize,
            n_workers,
            slots,
            lists,
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

    fn list(&self, id: u32) -> &[u32] {
        self.lists
            .get(id as usize)
            .and_then(|&(start, len)| {
                self.workers
                    .get(start as usize..start as usize + len as usize)
            })
            .unwrap_or(&[])
    }

    /// For a prompt whose full blocks hash to `hashes` (in order), sets `depth[w]` to the
    /// number of leading blocks worker `w` holds (0 for most). `depth` is the caller's
    /// scratch, reused across requests; it is resized to the view's workers.
    pub fn matches(&self, hashes: &[u64], depth: &mut Vec<u32>) {
        depth.clear();
        depth.resize(self.n_workers, 0);
        // A run of blocks with the same worker list: the workers that advance at its
        // first block advance at every block of the run, so the list is walked twice
        // per run (to mark them, then to add the run's length), not once per block.
        let mut run: Option<(u32, u32, u32)> = None; // (list, first level, length)
        let finish = |depth: &mut [u32], run: Option<(u32, u32, u32)>| {
            if let Some((id, first, len)) = run
                && len > 1
            {
                for &w in self.list(id) {
                    if let Some(d) = depth.get_mut(w as usize)
                        && *d == first + 1
                    {
                        *d = first + len;
                    }
                }
            }
        };
        for (i, hash) in hashes.iter().enumerate() {
            let level = i as u32;
            let Some(&id) = self.slots.get(hash) else {
                break;
            };
            if let Some((run_id, _, len)) = run.as_mut()
                && *run_id == id
            {
                *len += 1;
                continue;
            }
            finish(depth, run);
            let mut advanced = false;
            for &w in self.list(id) {
                if let Some(d) = depth.get_mut(w as usize)
                    && *d == level
                {
                    *d = level + 1;
                    advanced = true;
                }
            }
            run = advanced.then_some((id, level, 1));
            if !advanced {
                break;
            }
        }
        finish(depth, run);
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
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The shared-list shortcut gives the same depths as walking every block.
    #[test]
    fn matches_agree_with_a_plain_walk_on_random_caches() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let prompts: Vec<Vec<u32>> = (0..4)
                .map(|_| {
                    let shared = rng.random_range(0..64);
                    let mut p: Vec<u32> = (0..shared).collect();
                    p.extend((0..rng.random_range(0..96)).map(|_| rng.random_range(0..50)));
                    p
                })
                .collect();
            let all: Vec<Vec<u64>> = prompts.iter().map(|p| hashes(p, 8)).collect();
            let reports: Vec<(u32, Vec<u64>)> = (0..rng.random_range(1..12))
                .map(|_| {
                    let mut held = Vec::new();
                    for h in &all {
                        if rng.random_bool(0.5) && !h.is_empty() {
                            let upto = rng.random_range(0..=h.len());
                            // Sometimes lose a block in the middle.
                            let hole = rng.random_bool(0.2).then(|| rng.random_range(0..h.len()));
                            held.extend(
                                h[..upto]
                                    .iter()
                                    .enumerate()
                                    .filter(|(i, _)| Some(*i) != hole)
                                    .map(|(_, x)| *x),
                            );
                        }
                    }
                    (8, held)
                })
                .collect();
            let index = PrefixIndex::build(reports.iter().map(|(s, v)| (*s, v.as_slice())));
            let mut depth = Vec::new();
            for h in &all {
                index.matches(h, &mut depth);
                let plain: Vec<u32> = reports
                    .iter()
                    .map(|(_, held)| h.iter().take_while(|x| held.contains(x)).count() as u32)
                    .collect();
                assert_eq!(depth, plain);
            }
        }
    }

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
        assert_eq!(out, vec![3, 0, 1, 1, 0]);
        // A prompt nobody holds.
        index.matches(&hashes(&[7; 64], 16), &mut out);
        assert_eq!(out, vec![0; 5]);
    }

    #[test]
    fn empty_fleet_has_no_block_size() {
        let index = PrefixIndex::build(std::iter::empty());
        assert_eq!(index.block_size(), 0);
        assert!(index.is_empty());
        let mut out = vec![1, 1];
        index.matches(&[1, 2, 3], &mut out);
        assert!(out.is_empty());
        let mut h = vec![1];
        prompt_hashes(&[1, 2, 3], 0, &mut h);
        assert!(h.is_empty());
    }
}
