//! Plugins shipped to a fleet over Kafka: published once, signed, staged, run by every node.
//!
//! The plugin topic is compacted and keyed by plugin name. A *release* is one record keyed by
//! the plugin's name: its headers carry the metadata and the signature, its value the
//! component — or, for a component larger than one chunk (`--chunk-bytes`, 512 KiB by
//! default, under every broker's default 1 MB message limit), its first chunk, the others
//! following as records keyed `NAME/DIGEST/INDEX`. A removal is a tombstone keyed by the name,
//! signed in its headers. Nodes read the topic from the beginning, keep the latest release per
//! name, verify it and load it through the same path as a file.
//!
//! # Layout
//! - this module: the record format and the signature (pure, unit-tested).
//! - [`node`]: what a node does with the topic, and the status it reports.
//! - [`cli`]: `flux-gateway plugin keygen | publish | promote | remove | status`.

pub mod cli;
pub mod node;

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Header naming what a record of the plugin topic is.
pub const KIND: &str = "flux-kind";
const RELEASE: &str = "release";
const CHUNK: &str = "chunk";
const REMOVAL: &str = "removal";

/// Which nodes run a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Every node.
    All,
    /// Only the nodes named (chosen by the publisher from the fleet's status).
    Canary(Vec<String>),
}

impl Stage {
    pub fn includes(&self, node: &str) -> bool {
        match self {
            Self::All => true,
            Self::Canary(nodes) => nodes.iter().any(|n| n == node),
        }
    }

    fn parse(text: &str) -> Result<Self, RecordError> {
        match text.split_once(':') {
            None if text == "all" => Ok(Self::All),
            Some(("canary", nodes)) if !nodes.is_empty() => {
                Ok(Self::Canary(nodes.split(',').map(str::to_owned).collect()))
            }
            _ => Err(RecordError::Malformed("flux-stage")),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Canary(nodes) => write!(f, "canary:{}", nodes.join(",")),
        }
    }
}

/// A published version of a plugin: everything a node checks before loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub plugin: String,
    pub version: String,
    pub wit: String,
    /// SHA-256 of the component, hex.
    pub digest: String,
    pub size: u64,
    pub chunks: u32,
    pub stage: Stage,
    pub published_at_ms: u64,
}

impl Release {
    /// What is signed: every field, so none can be changed without the key.
    fn signed_text(&self) -> String {
        format!(
            "flux-plugin-release/1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.plugin,
            self.version,
            self.wit,
            self.digest,
            self.size,
            self.chunks,
            self.stage,
            self.published_at_ms
        )
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (KIND, RELEASE.into()),
            ("flux-plugin", self.plugin.clone()),
            ("flux-version", self.version.clone()),
            ("flux-wit", self.wit.clone()),
            ("flux-digest", self.digest.clone()),
            ("flux-size", self.size.to_string()),
            ("flux-chunks", self.chunks.to_string()),
            ("flux-stage", self.stage.to_string()),
            ("flux-published-at", self.published_at_ms.to_string()),
        ]
    }

    fn from_headers(headers: &Headers<'_>) -> Result<Self, RecordError> {
        let number = |name: &'static str| {
            headers
                .get(name)?
                .parse::<u64>()
                .map_err(|_| RecordError::Malformed(name))
        };
        let chunks = u32::try_from(number("flux-chunks")?)
            .ok()
            .filter(|&c| c > 0)
            .ok_or(RecordError::Malformed("flux-chunks"))?;
        Ok(Self {
            plugin: headers.get("flux-plugin")?.to_owned(),
            version: headers.get("flux-version")?.to_owned(),
            wit: headers.get("flux-wit")?.to_owned(),
            digest: headers.get("flux-digest")?.to_owned(),
            size: number("flux-size")?,
            chunks,
            stage: Stage::parse(headers.get("flux-stage")?)?,
            published_at_ms: number("flux-published-at")?,
        })
    }
}

/// A signed tombstone: the plugin is unloaded on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub plugin: String,
    pub removed_at_ms: u64,
}

impl Removal {
    fn signed_text(&self) -> String {
        format!(
            "flux-plugin-removal/1\n{}\n{}",
            self.plugin, self.removed_at_ms
        )
    }
}

/// The key of a release's chunk `index` (the release record itself holds chunk 0).
pub fn chunk_key(plugin: &str, digest: &str, index: u32) -> String {
    format!("{plugin}/{digest}/{index}")
}

/// Splits `component` into the chunks of its release.
pub fn chunks(component: &[u8], chunk_bytes: usize) -> Vec<&[u8]> {
    if component.is_empty() {
        return vec![component];
    }
    component.chunks(chunk_bytes.max(1)).collect()
}

/// A record of the plugin topic, as a node reads it.
#[derive(Debug)]
pub enum Record<'a> {
    Release {
        release: Release,
        signature: Option<Signature>,
        first_chunk: &'a [u8],
    },
    Chunk {
        plugin: &'a str,
        digest: &'a str,
        index: u32,
        bytes: &'a [u8],
    },
    Removal {
        removal: Removal,
        signature: Option<Signature>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the {0} header is missing")]
    Missing(&'static str),
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    #[error("a record of kind {0:?} is not a plugin release, chunk or removal")]
    UnknownKind(String),
}

/// A record's headers, by name.
pub struct Headers<'a>(pub Vec<(&'a str, &'a str)>);

impl<'a> Headers<'a> {
    /// A Kafka message's headers; a header whose value is not UTF-8 is left out.
    pub fn of(message: &'a impl rdkafka::Message) -> Self {
        use rdkafka::message::Headers as _;
        Self(
            message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .filter_map(|h| Some((h.key, std::str::from_utf8(h.value?).ok()?)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    fn get(&self, name: &'static str) -> Result<&'a str, RecordError> {
        self.0
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
            .ok_or(RecordError::Missing(name))
    }

    fn signature(&self) -> Result<Option<Signature>, RecordError> {
        let Ok(text) = self.get("flux-signature") else {
            return Ok(None);
        };
        let bytes = BASE64
            .decode(text)
            .map_err(|_| RecordError::Malformed("flux-signature"))?;
        Signature::from_slice(&bytes)
            .map(Some)
            .map_err(|_| RecordError::Malformed("flux-signature"))
    }
}

impl<'a> Record<'a> {
    pub fn parse(
        key: &'a str,
        value: Option<&'a [u8]>,
        headers: &Headers<'a>,
    ) -> Result<Self, RecordError> {
        match headers.get(KIND)? {
            RELEASE => Ok(Self::Release {
                release: Release::from_headers(headers)?,
                signature: headers.signature()?,
                first_chunk: value.unwrap_or_default(),
            }),
            CHUNK => {
                let mut parts = key.rsplitn(3, '/');
                let (Some(index), Some(digest), Some(plugin)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(RecordError::Malformed("key"));
                };
                Ok(Self::Chunk {
                    plugin,
                    digest,
                    index: index.parse().map_err(|_| RecordError::Malformed("key"))?,
                    bytes: value.unwrap_or_default(),
                })
            }
            REMOVAL => Ok(Self::Removal {
                removal: Removal {
                    plugin: key.to_owned(),
                    removed_at_ms: headers
                        .get("flux-removed-at")?
                        .parse()
                        .map_err(|_| RecordError::Malformed("flux-removed-at"))?,
                },
                signature: headers.signature()?,
            }),
            other => Err(RecordError::UnknownKind(other.to_owned())),
        }
    }
}

/// A publisher's signing key.
pub struct PublisherKey(SigningKey);

impl PublisherKey {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The key file's contents: the base64 of the 32-byte seed.
    pub fn to_file_text(&self) -> String {
        BASE64.encode(self.0.to_bytes())
    }

    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let seed: [u8; 32] = BASE64
            .decode(text.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(KeyError)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// What goes in `[fleet] trusted_keys`.
    pub fn public(&self) -> String {
        BASE64.encode(self.0.verifying_key().to_bytes())
    }

    /// The release's headers, signed.
    pub fn sign_release(&self, release: &Release) -> Vec<(&'static str, String)> {
        let mut headers = release.headers();
        headers.push(("flux-signature", self.sign(&release.signed_text())));
        headers
    }

    pub fn sign_removal(&self, removal: &Removal) -> Vec<(&'static str, String)> {
        vec![
            (KIND, REMOVAL.into()),
            ("flux-removed-at", removal.removed_at_ms.to_string()),
            ("flux-signature", self.sign(&removal.signed_text())),
        ]
    }

    fn sign(&self, text: &str) -> String {
        BASE64.encode(self.0.sign(text.as_bytes()).to_bytes())
    }
}

/// Headers of an unsigned release (development mode).
pub fn unsigned_release(release: &Release) -> Vec<(&'static str, String)> {
    release.headers()
}

pub fn unsigned_removal(removal: &Removal) -> Vec<(&'static str, String)> {
    vec![
        (KIND, REMOVAL.into()),
        ("flux-removed-at", removal.removed_at_ms.to_string()),
    ]
}

/// Headers of a release's chunk.
pub fn chunk_headers() -> Vec<(&'static str, String)> {
    vec![(KIND, CHUNK.into())]
}

#[derive(Debug, thiserror::Error)]
#[error("a key file holds the base64 of a 32-byte ed25519 seed")]
pub struct KeyError;

/// Why a release or removal is not trusted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Distrust {
    #[error("unsigned, and this node loads only signed releases ([fleet] allow_unsigned = false)")]
    Unsigned,
    #[error(
        "its signature matches none of the trusted keys (tampered, or signed by an untrusted publisher)"
    )]
    BadSignature,
}

/// The publishers a node trusts.
pub struct Trust {
    keys: Vec<VerifyingKey>,
    allow_unsigned: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("trusted key {index} is not the base64 of a 32-byte ed25519 public key")]
pub struct TrustError {
    index: usize,
}

impl Trust {
    pub fn new(keys: &[String], allow_unsigned: bool) -> Result<Self, TrustError> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(index, text)| {
                BASE64
                    .decode(text.trim())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
                    .ok_or(TrustError { index })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            allow_unsigned,
        })
    }

    pub fn release(
        &self,
        release: &Release,
        signature: Option<&Signature>,
    ) -> Result<(), Distrust> {
        self.check(&release.signed_text(), signature)
    }

    pub fn removal(
        &self,
        removal: &Removal,
        signature: Option<&Signature>,
    ) -> Result<(), Distrust> {
        self.check(&removal.signed_text(), signature)
    }

    /// A signature must verify, even in development mode: a bad one means tampering.
    fn check(&self, text: &str, signature: Option<&Signature>) -> Result<(), Distrust> {
        match signature {
            None if self.allow_unsigned => Ok(()),
            None => Err(Distrust::Unsigned),
            Some(signature) => self
                .keys
                .iter()
                .any(|key| key.verify(text.as_bytes(), signature).is_ok())
                .then_some(())
                .ok_or(Distrust::BadSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release {
            plugin: "relay".into(),
            version: "v1".into(),
            wit: "1.1.0".into(),
            digest: "ab".repeat(32),
            size: 1234,
            chunks: 1,
            stage: Stage::Canary(vec!["node-a".into()]),
            published_at_ms: 1_700_000_000_000,
        }
    }

    fn read<'a>(headers: &'a [(&'static str, String)]) -> Headers<'a> {
        Headers(headers.iter().map(|(k, v)| (*k, v.as_str())).collect())
    }

    #[test]
    fn a_signed_release_round_trips_and_any_changed_field_breaks_its_signature() {
        let key = PublisherKey::generate().unwrap();
        let trust = Trust::new(&[key.public()], false).unwrap();
        let headers = key.sign_release(&release());
        let Record::Release {
            release: read_back,
            signature,
            ..
        } = Record::parse("relay", Some(b"wasm"), &read(&headers)).unwrap()
        else {
            panic!("a release");
        };
        assert_eq!(read_back, release());
        assert_eq!(trust.release(&read_back, signature.as_ref()), Ok(()));

        for tamper in [
            |r: &mut Release| r.digest = "cd".repeat(32),
            |r: &mut Release| r.stage = Stage::All,
            |r: &mut Release| r.version = "v2".into(),
            |r: &mut Release| r.published_at_ms += 1,
        ] {
            let mut changed = read_back.clone();
            tamper(&mut changed);
            assert_eq!(
                trust.release(&changed, signature.as_ref()),
                Err(Distrust::BadSignature)
            );
        }
    }

    #[test]
    fn untrusted_and_unsigned_releases_are_refused_unless_unsigned_is_allowed() {
        let (ours, theirs) = (
            PublisherKey::generate().unwrap(),
            PublisherKey::generate().unwrap(),
        );
        let trust = Trust::new(&[ours.public()], false).unwrap();
        let headers = theirs.sign_release(&release());
        let Ok(Record::Release { signature, .. }) = Record::parse("relay", None, &read(&headers))
        else {
            panic!("a release");
        };
        assert_eq!(
            trust.release(&release(), signature.as_ref()),
            Err(Distrust::BadSignature)
        );
        assert_eq!(trust.release(&release(), None), Err(Distrust::Unsigned));
        let development = Trust::new(&[ours.public()], true).unwrap();
        assert_eq!(development.release(&release(), None), Ok(()));
        assert_eq!(
            development.release(&release(), signature.as_ref()),
            Err(Distrust::BadSignature),
            "a bad signature is refused even in development mode"
        );
    }

    #[test]
    fn removals_are_signed_too() {
        let key = PublisherKey::generate().unwrap();
        let trust = Trust::new(&[key.public()], false).unwrap();
        let removal = Removal {
            plugin: "relay".into(),
            removed_at_ms: 5,
        };
        let headers = key.sign_removal(&removal);
        let Ok(Record::Removal {
            removal: read_back,
            signature,
        }) = Record::parse("relay", None, &read(&headers))
        else {
            panic!("a removal");
        };
        assert_eq!(read_back, removal);
        assert_eq!(trust.removal(&read_back, signature.as_ref()), Ok(()));
        let other = Removal {
            plugin: "weather".into(),
            removed_at_ms: 5,
        };
        assert_eq!(
            trust.removal(&other, signature.as_ref()),
            Err(Distrust::BadSignature)
        );
    }

    #[test]
    fn chunks_split_and_name_themselves() {
        let component = vec![7u8; 1000];
        let parts = chunks(&component, 300);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [300, 300, 300, 100]
        );
        let key = chunk_key("relay", "abcd", 3);
        let headers = chunk_headers();
        let Ok(Record::Chunk {
            plugin,
            digest,
            index,
            bytes,
        }) = Record::parse(&key, Some(parts[3]), &read(&headers))
        else {
            panic!("a chunk");
        };
        assert_eq!(
            (plugin, digest, index, bytes.len()),
            ("relay", "abcd", 3, 100)
        );
        assert_eq!(
            Stage::parse(&Stage::Canary(vec!["a".into(), "b".into()]).to_string()),
            Ok(Stage::Canary(vec!["a".into(), "b".into()]))
        );
        assert!(Stage::parse("canary:").is_err());
        assert!(Stage::Canary(vec!["a".into()]).includes("a"));
        assert!(!Stage::Canary(vec!["a".into()]).includes("b"));
    }
}
