//! Paged KV-cache bookkeeping, sans-IO: which fixed-size blocks each sequence owns, their
//! reference counts, and the automatic prefix cache.
//!
//! The tensors themselves live in the backend (host memory for `cpu`, device memory for
//! `cuda`); this module only hands out block ids. A full block whose tokens are computed
//! is registered under its chain hash ([`meridian_proto::prefix::block_hash`]): a later
//! sequence with the same leading tokens takes the same block (reference count + 1)
//! instead of recomputing it. A block nobody references keeps its contents and stays
//! findable until it is evicted, least recently used first, to make room.

use std::collections::{BTreeMap, HashMap};

use meridian_proto::prefix::ROOT_HASH;

/// Index of a block in the backend's KV storage.
pub type BlockId = u32;

#[derive(Debug, Clone, Copy, Default)]
struct BlockMeta {
    ref_count: u32,
    /// Chain hash when the block is full and registered in the prefix cache.
    hash: Option<u64>,
    /// LRU stamp while the block is unreferenced but cached.
    lru_tick: u64,
}

/// The cached leading blocks of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Referenced once more each; the caller owns them.
    pub blocks: Vec<BlockId>,
    /// Chain hash of the last block (`ROOT_HASH` when none matched).
    pub last_hash: u64,
}

/// Hands out KV blocks; owns the prefix-cache index.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    meta: Vec<BlockMeta>,
    /// Blocks with no contents worth keeping.
    free: Vec<BlockId>,
    /// Unreferenced cached blocks, oldest first: evicted in this order.
    evictable: BTreeMap<u64, BlockId>,
    /// Chain hash -> block holding those tokens.
    cached: HashMap<u64, BlockId>,
    tick: u64,
    stats: PrefixStats,
}

/// Prefix-cache counters since start, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up in the cache.
    pub queried_tokens: u64,
    /// Of those, tokens found cached.
    pub hit_tokens: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let num_blocks = num_blocks.min(u32::MAX as usize);
        Self {
            block_size,
            meta: vec![BlockMeta::default(); num_blocks],
            // Popped from the back: hand out low ids first.
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            cached: HashMap::new(),
            tick: 0,
            stats: PrefixStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total_blocks(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that can be handed out now (free, or cached and evictable).
    pub fn available_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// Takes every cached leading full block of `tokens`, at most `max_tokens` tokens'
    /// worth, and returns them (each referenced once more). The caller owns them.
    pub fn match_prefix(&mut self, tokens: &[u32], max_tokens: usize) -> PrefixMatch {
        let usable = max_tokens.min(tokens.len());
        let mut found = PrefixMatch {
            blocks: Vec::new(),
            last_hash: ROOT_HASH,
        };
        for hash in meridian_proto::prefix::block_hashes(&tokens[..usable], self.block_size) {
            let Some(&block) = self.cached.get(&hash) else {
                break;
            };
            self.retain(block);
            found.blocks.push(block);
            found.last_hash = hash;
        }
        self.stats.queried_tokens += usable as u64;
        self.stats.hit_tokens += (found.blocks.len() * self.block_size) as u64;
        found
    }

    /// One block for new tokens, evicting the least recently used cached block if no
    /// free one is left. `None` when every block is referenced.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, block) = self.evictable.pop_first()?;
                let meta = &mut self.meta[block as usize];
                if let Some(hash) = meta.hash.take() {
                    self.cached.remove(&hash);
                }
                self.stats.evictions += 1;
                block
            }
        };
        self.meta[block as usize] = BlockMeta {
            ref_count: 1,
            hash: None,
            lru_tick: 0,
        };
        Some(block)
    }

    /// Registers a full, computed block under its chain hash so later prompts can reuse
    /// it. If another block already holds the same tokens, this one stays private.
    pub fn register_full(&mut self, block: BlockId, hash: u64) {
        if self.cached.contains_key(&hash) || self.meta[block as usize].hash.is_some() {
            return;
        }
        self.meta[block as usize].hash = Some(hash);
        self.cached.insert(hash, block);
    }

    /// Drops one reference to each block (a sequence finished, was cancelled or
    /// preempted). Cached blocks stay findable until evicted; others are freed.
    pub fn release(&mut self, blocks: &[BlockId]) {
        // Release in reverse so a sequence's later blocks are evicted before its earlier
        // ones (a later block is useless without the blocks before it).
        for &block in blocks.iter().rev() {
            let meta = &mut self.meta[block as usize];
            debug_assert!(meta.ref_count > 0, "double release of block {block}");
            meta.ref_count = meta.ref_count.saturating_sub(1);
            if meta.ref_count == 0 {
                if meta.hash.is_some() {
                    self.tick += 1;
                    meta.lru_tick = self.tick;
                    self.evictable.insert(self.tick, block);
                } else {
                    self.free.push(block);
                }
            }
        }
    }

    fn retain(&mut self, block: BlockId) {
        let meta = &mut self.meta[block as usize];
        if meta.ref_count == 0 {
            self.evictable.remove(&meta.lru_tick);
        }
        meta.ref_count += 1;
    }

    /// Hashes of cached blocks, most recently used first, at most `limit`: what a worker
    /// reports so routers can estimate prefix hits. Referenced blocks count as most
    /// recent.
    pub fn cached_hashes(&self, limit: usize) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .meta
            .iter()
            .filter(|m| m.ref_count > 0)
            .filter_map(|m| m.hash)
            .take(limit)
            .collect();
        for (_, &block) in self.evictable.iter().rev() {
            if out.len() >= limit {
                break;
            }
            if let Some(h) = self.meta[block as usize].hash {
                out.push(h);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
