//! Compiled plugins kept across restarts, and authenticated before they are trusted.
//!
//! A compiled artifact is native code: deserializing it runs it outside the WebAssembly
//! sandbox. So the cache lives in a directory the host owns (not the plugin directory, which
//! domain teams and deploy tools write to), and every artifact carries an HMAC-SHA256 of its
//! bytes under a key only the host holds: the configured `reload.precompiled_key`, else a
//! random key created once in the cache directory, readable by the gateway's user only. An
//! artifact whose MAC does not verify is never deserialized; the plugin is compiled again.

use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;
const MAC_LEN: usize = 32;
const KEY_FILE: &str = "artifact.key";

/// What became of a lookup.
pub enum Cached {
    Hit(Component),
    Miss,
    /// An artifact was there but failed authentication (or no longer deserializes): it was
    /// not loaded.
    Refused(String),
}

/// The precompiled-artifact directory and the key that authenticates its artifacts.
pub struct PrecompiledCache {
    dir: PathBuf,
    key: Vec<u8>,
}

impl PrecompiledCache {
    /// Opens (creating if needed) `dir`, with `key`, else the directory's own key file.
    pub fn open(dir: PathBuf, key: Option<&Secret>) -> std::io::Result<Self> {
        create_private_dir(&dir)?;
        let key = match key {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => key_file(&dir)?,
        };
        Ok(Self { dir, key })
    }

    /// Where the artifact of the component with content `digest` compiled by `engine` lives:
    /// content digest plus engine compatibility, so another engine configuration never reads it.
    fn path(&self, engine: &Engine, digest: &str) -> PathBuf {
        let mut compatibility = std::collections::hash_map::DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut compatibility);
        self.dir
            .join(format!("{digest}-{:016x}.cwasm", compatibility.finish()))
    }

    /// The compiled component with content `digest`, if an authentic one is kept.
    pub fn load(&self, engine: &Engine, digest: &str) -> Cached {
        let path = self.path(engine, digest);
        let stored = match std::fs::read(&path) {
            Ok(stored) => stored,
            Err(e) if e.kind() == ErrorKind::NotFound => return Cached::Miss,
            Err(e) => return Cached::Refused(format!("cannot read {}: {e}", path.display())),
        };
        let Some((mac, artifact)) = stored.split_at_checked(MAC_LEN) else {
            return Cached::Refused(format!("{} is truncated", path.display()));
        };
        if self.mac().chain_update(artifact).verify_slice(mac).is_err() {
            return Cached::Refused(format!(
                "{} is not authenticated by this host's key",
                path.display()
            ));
        }
        // SAFETY: the bytes are authenticated: this host serialized them itself, for this
        // engine configuration (the file name carries its compatibility hash).
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Cached::Hit(component),
            Err(e) => Cached::Refused(format!("{}: {e:#}", path.display())),
        }
    }

    /// Writes the MAC and the artifact, then renames: a concurrent reader never sees half.
    pub fn store(
        &self,
        engine: &Engine,
        digest: &str,
        component: &Component,
    ) -> std::io::Result<()> {
        let path = self.path(engine, digest);
        let artifact = component.serialize().map_err(std::io::Error::other)?;
        let mac = self.mac().chain_update(&artifact).finalize().into_bytes();
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&mac)?;
        file.write_all(&artifact)?;
        drop(file);
        std::fs::rename(&partial, &path)
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The directory's key: read, or created once (atomically: gateways starting together agree).
fn key_file(dir: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(key) if key.len() >= MAC_LEN => return Ok(key),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is too short",
                path.display()
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key: Vec<u8> = (0..2)
        .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
        .collect();
    let partial = dir.join(format!("{KEY_FILE}.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?
        .write_all(&key)?;
    // A hard link fails if the key exists: whoever linked first wins, the others read it.
    let linked = std::fs::hard_link(&partial, &path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => std::fs::read(&path),
        Err(e) => Err(e),
    }
}

/// A component's identity: the SHA-256 of its bytes, in hex.
pub fn content_digest(wasm: &[u8]) -> String {
    Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
