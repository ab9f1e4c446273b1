# Sourced by the project's scripts: one cache for downloads and build outputs, so a fresh
# clone reuses what an earlier one built.
export MERIDIAN_CACHE_DIR="${MERIDIAN_CACHE_DIR:-$HOME/.cache/meridian}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MERIDIAN_CACHE_DIR/target}"
