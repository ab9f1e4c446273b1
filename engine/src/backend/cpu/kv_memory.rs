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
//! ranges with huge pages) and is zero until written, like `vec![0; n]`.

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
}
