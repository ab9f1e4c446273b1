//! Test and benchmark support: shared by the engine's unit tests, its integration tests
//! and its benches.

use std::path::PathBuf;

/// The real SmolLM2-135M-Instruct Q4_1 file in the asset cache. `scripts/test` fetches it
/// before the tests run; a test that needs it fails loudly rather than skipping, so CI
/// can never pass without having run the real model.
pub fn real_model_path() -> PathBuf {
    let cache = std::env::var_os("MERIDIAN_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache").join("meridian")
        });
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `cargo run --bin meridian -- models pull` (scripts/test does)",
        path.display()
    );
    path
}
