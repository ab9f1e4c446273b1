//! The CPU backend's KV memory: one anonymous mapping for every layer's K and V, on
//! transparent huge pages where the kernel allows them.
//!
//! Once the prefix cache has filled, new blocks come from the least recently used
//! cached ones, so a sequence's blocks end up scattered over the whole cache (512 MiB
//! by default). On 4 KiB pages each 2 KiB run of a block that attention reads is a TLB
//! miss with a page walk of its own: a worker that had served a saturating trace paid
//! 5.5-6.1 us of decode per token of context where a fresh one, its blocks still
//! handed out in order, paid 4.1-4.7 (the same requests, probed in turn, one compute
//! thread each). On 2 MiB pages the whole cache is a few hundred TLB entries.
//!
//! The mapping starts its data on a 2 MiB boundary (the kernel backs only aligned 2 MiB
//! ranges with huge pages) and is zeroed. Every page is faulted in when the cache is
//! made, as vLLM and llama.cpp allocate theirs whole: left to the first write, the
//! kernel zeroes (and may compact memory for) each huge page inside a step. The first
//! step after a load, a 36-token prompt, took 317 ms instead of 27, and the router,
//! which takes a worker's prefill speed from its first prefill, sent callers to the
//! other side of the world for the next two seconds. The whole cache up front added
//! 0.04-0.13 s to a load here (once 1.1 s).

use memmap2::MmapMut;

/// The size of a transparent huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Every layer's K and V: `[layer][K, V][block][kv_head][slot][head_dim]`, as IEEE
/// half-precision bits.
pub(super) struct KvMemory {
    map: MmapMut,
    /// Bytes from the mapping's start to the first huge-page boundary.
    start: usize,
    /// Elements of one layer's K (or V).
    per_layer: usize,
    layers: usize,
    huge_pages: bool,
}

impl KvMemory {
    /// Zeroed K and V for `layers` layers of `per_layer` elements each.
    pub(super) fn new(layers: usize, per_layer: usize) -> std::io::Result<Self> {
        let bytes = layers
            .checked_mul(per_layer)
            .and_then(|n| n.checked_mul(2 * size_of::<u16>()))
            .and_then(|n| n.checked_add(HUGE_PAGE))
            .ok_or_else(|| std::io::Error::other("KV cache size overflows"))?;
        let map = MmapMut::map_anon(bytes)?;
        let start = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        // Only a hint: without transparent huge pages (or with them off) the cache runs
        // on small pages, slower once scattered but the same numbers.
        #[cfg(target_os = "linux")]
        let huge_pages = map
            .advise_range(memmap2::Advice::HugePage, start, bytes - start)
            .is_ok();
        #[cfg(not(target_os = "linux"))]
        let huge_pages = false;
        let mut map = map;
        // One write per page (4 KiB, the smallest there is) faults every page in; after
        // the hint, on huge pages where the kernel has them.
        for page in map[start..].chunks_mut(4096) {
            page[0] = 0;
        }
        Ok(Self {
            map,
            start,
            per_layer,
            layers,
            huge_pages,
        })
    }

    /// Whether the kernel took the huge-page hint.
    pub(super) fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Layer `layer`'s K and V.
    pub(super) fn layer_mut(&mut self, layer: usize) -> (&mut [u16], &mut [u16]) {
        assert!(layer < self.layers, "layer {layer} of {}", self.layers);
        let len = 2 * self.per_layer * size_of::<u16>();
        let from = self.start + layer * len;
        // The mapping is page-aligned and `start` a multiple of 2 MiB, so every layer's
        // bytes start on a u16 boundary and hold a whole number of u16s.
        let elements: &mut [u16] = bytemuck::cast_slice_mut(&mut self.map[from..from + len]);
        elements.split_at_mut(self.per_layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_zeroed_apart_and_aligned() {
        let mut kv = KvMemory::new(3, 1000).unwrap();
        for layer in 0..3 {
            let (k, v) = kv.layer_mut(layer);
            assert_eq!((k.len(), v.len()), (1000, 1000));
            assert!(k.iter().chain(v.iter()).all(|&x| x == 0));
            k.fill(layer as u16 + 1);
            v.fill(layer as u16 + 11);
        }
        for layer in 0..3 {
            let (k, v) = kv.layer_mut(layer);
            assert!(k.iter().all(|&x| x == layer as u16 + 1), "layer {layer} K");
            assert!(v.iter().all(|&x| x == layer as u16 + 11), "layer {layer} V");
        }
        let (k, _) = kv.layer_mut(0);
        assert_eq!(k.as_ptr() as usize % HUGE_PAGE, 0);
    }

    /// The mapping's resident size in KiB, from the kernel's own account.
    #[cfg(target_os = "linux")]
    fn resident_kib(at: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&at);
            } else if inside && let Some(rss) = line.strip_prefix("Rss:") {
                return rss.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {at:#x}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn every_page_is_resident_before_the_first_step() {
        // 2 layers x 2 MiB of K and V each: 8 MiB.
        let mut kv = KvMemory::new(2, 1 << 20).unwrap();
        let at = kv.layer_mut(0).0.as_ptr() as usize;
        assert!(resident_kib(at) >= 8 << 10, "{} KiB", resident_kib(at));
    }
}
