//! Shared helpers for the gateway's integration tests.

use std::path::PathBuf;

/// Where `scripts/build-plugins.sh` leaves the guest components: `$FLUX_WASM_DIR`, else the
/// workspace's `target/wasm32-wasip2/release`.
pub fn wasm_dir() -> PathBuf {
    std::env::var_os("FLUX_WASM_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
        PathBuf::from,
    )
}

/// The bytes of a built guest, e.g. `wasm("flux_crypto")`.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the guests first with scripts/build-plugins.sh",
            path.display()
        )
    })
}
