//! Handshake authentication: who a socket is.
//!
//! With `[auth] mode = "jwt"`, every Socket.IO handshake must carry a JWT (the `auth` payload's
//! `token`, else an `Authorization: Bearer` header). Tokens are verified with `jsonwebtoken`
//! against an HS256 secret, PEM public keys (RS256, ES256) or a JWKS endpoint whose keys are
//! cached by `kid`. The verified token's subject is the user; its scopes authorize plugins
//! (`[plugins.NAME] required_scope`), and the whole principal reaches plugins' `on-request`.
//!
//! The JWKS endpoint is fetched at start and again when a token names a `kid` not yet known,
//! at most once per `jwks_min_refetch_ms` and never longer than `jwks_timeout_ms`; a token
//! whose key is known never waits for the endpoint, so an unreachable endpoint cannot block
//! users whose keys were already fetched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::config::{AuthConfig, AuthMode, Secret};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::telemetry::{InternalEvent, JwksFetched};

/// Longest token accepted: verification cost and memory stay bounded.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The algorithms a token may be signed with.
const ACCEPTED: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    pub scopes: Vec<String>,
    /// Every claim of the token, as JSON text.
    pub claims: String,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a token was refused. The message is what the client is told: words, no internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("authentication required: no token was sent")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token audience not accepted")]
    WrongAudience,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("the token is for another user")]
    OtherSubject,
}

impl AuthRefusal {
    /// The `outcome` label of `flux_auth_handshakes_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::UnknownKey => "unknown_key",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::OtherSubject => "other_subject",
        }
    }
}

/// Why the authenticator could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth mode \"jwt\" needs hs256_secret, public_key_files or jwks_url")]
    NoKeys,
    #[error("cannot read the public key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is neither an RSA nor an EC (P-256) public key in PEM")]
    BadKey { path: String },
    #[error("cannot build the JWKS client: {0}")]
    Client(String),
}

/// Verifies tokens. Cheap to share.
pub struct Authenticator {
    mode: AuthMode,
    hs256: Option<DecodingKey>,
    /// PEM keys: tokens without a `kid` (or with one no JWKS knows) are tried against these.
    pem_keys: Vec<DecodingKey>,
    jwks: Option<Jwks>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_secs: u64,
    scope_claim: String,
    /// How long after `exp` a socket may still refresh its token.
    pub refresh_grace: Duration,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig, metrics: Arc<Metrics>) -> Result<Self, AuthSetupError> {
        let hs256 = config
            .hs256_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.expose().as_bytes()))
            .transpose()
            .map_err(|_| AuthSetupError::NoKeys)?;
        let mut pem_keys = Vec::new();
        for path in &config.public_key_files {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| AuthSetupError::ReadKey {
                path: shown.clone(),
                source,
            })?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .map_err(|_| AuthSetupError::BadKey { path: shown })?;
            pem_keys.push(key);
        }
        let jwks = match &config.jwks_url {
            Some(url) => Some(Jwks::new(url, config, metrics.clone())?),
            None => None,
        };
        if config.mode == AuthMode::Jwt && hs256.is_none() && pem_keys.is_empty() && jwks.is_none()
        {
            return Err(AuthSetupError::NoKeys);
        }
        Ok(Self {
            mode: config.mode,
            hs256,
            pem_keys,
            jwks,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_secs: config.leeway_secs,
            scope_claim: config.scope_claim.clone(),
            refresh_grace: Duration::from_millis(config.refresh_grace_ms),
            metrics,
        })
    }

    /// Whether handshakes must carry a token.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Jwt
    }

    /// Fetches the JWKS once in the background, so the first users need not wait for it.
    pub fn prefetch(self: &Arc<Self>) {
        if self.jwks.is_some() {
            let auth = self.clone();
            tokio::spawn(async move {
                if let Some(jwks) = &auth.jwks {
                    jwks.refetch().await;
                }
            });
        }
    }

    /// Verifies a handshake token and counts the outcome.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthRefusal> {
        let verified = match token {
            None => Err(AuthRefusal::Missing),
            Some(token) => self.verify(token).await,
        };
        let outcome = match &verified {
            Ok(_) => "accepted",
            Err(refusal) => refusal.outcome(),
        };
        self.metrics
            .auth_handshakes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        verified
    }

    /// Verifies `token`: signature, algorithm, `exp` (required), `sub` (required), and
    /// `aud` / `iss` when configured.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthRefusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthRefusal::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_refusal(token))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthRefusal::Algorithm);
        }
        let keys = self.keys_for(&header).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let mut refusal = AuthRefusal::UnknownKey;
        for key in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.principal(data.claims),
                Err(e) => {
                    refusal = refusal_of(e.kind());
                    if refusal != AuthRefusal::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(refusal)
    }

    /// The keys a token may have been signed with: the HS256 secret for HS256; for RS256 and
    /// ES256 the JWKS key named by `kid` (refetching the set once for an unknown `kid`), else
    /// the PEM keys.
    async fn keys_for(&self, header: &Header) -> Result<Vec<DecodingKey>, AuthRefusal> {
        if header.alg == Algorithm::HS256 {
            return self
                .hs256
                .clone()
                .map(|key| vec![key])
                .ok_or(AuthRefusal::Algorithm);
        }
        if let (Some(kid), Some(jwks)) = (&header.kid, &self.jwks) {
            if let Some(key) = jwks.key(kid) {
                return Ok(vec![key]);
            }
            jwks.refetch().await;
            if let Some(key) = jwks.key(kid) {
                return Ok(vec![key]);
            }
        }
        let family = header.alg.family();
        let pem: Vec<DecodingKey> = self
            .pem_keys
            .iter()
            .filter(|key| key.family() == family)
            .cloned()
            .collect();
        if pem.is_empty() {
            return Err(if self.jwks.is_some() || !self.pem_keys.is_empty() {
                AuthRefusal::UnknownKey
            } else {
                AuthRefusal::Algorithm
            });
        }
        Ok(pem)
    }

    fn principal(&self, claims: Map<String, Value>) -> Result<Principal, AuthRefusal> {
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(AuthRefusal::Malformed),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthRefusal::Malformed)?;
        let scopes = match claims.get(&self.scope_claim) {
            Some(Value::String(list)) => list.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Principal {
            subject,
            scopes,
            claims: Value::Object(claims).to_string(),
            expires_at,
        })
    }
}

/// Why `decode_header` failed: a header that parses but names an algorithm outside
/// jsonwebtoken's set (`none`, say) is an algorithm refusal, anything else is malformed.
fn header_refusal(token: &str) -> AuthRefusal {
    let named_alg = token
        .split('.')
        .next()
        .and_then(|header| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .is_some_and(|header| header.get("alg").is_some_and(Value::is_string));
    if named_alg {
        AuthRefusal::Algorithm
    } else {
        AuthRefusal::Malformed
    }
}

fn refusal_of(kind: &ErrorKind) -> AuthRefusal {
    match kind {
        ErrorKind::ExpiredSignature => AuthRefusal::Expired,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidKeyFormat => AuthRefusal::BadSignature,
        ErrorKind::InvalidAudience => AuthRefusal::WrongAudience,
        ErrorKind::InvalidIssuer => AuthRefusal::WrongIssuer,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => AuthRefusal::Algorithm,
        _ => AuthRefusal::Malformed,
    }
}

/// A JWKS endpoint's keys by `kid`.
struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the set was last fetched; held while fetching, so concurrent unknown `kid`s cause
    /// one fetch.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    metrics: Arc<Metrics>,
}

impl Jwks {
    fn new(url: &str, config: &AuthConfig, metrics: Arc<Metrics>) -> Result<Self, AuthSetupError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.jwks_timeout_ms))
            .build()
            .map_err(|e| AuthSetupError::Client(e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: RwLock::default(),
            fetched: tokio::sync::Mutex::new(None),
            min_refetch: Duration::from_millis(config.jwks_min_refetch_ms),
            metrics,
        })
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().get(kid).cloned()
    }

    /// Fetches the set unless it was fetched within `min_refetch`; keeps the known keys when
    /// the endpoint fails.
    async fn refetch(&self) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return;
        }
        *fetched = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                JwksFetched {
                    url: &self.url,
                    outcome: Ok(keys.len()),
                }
                .emit(&self.metrics);
                *self.keys.write() = keys;
            }
            Err(e) => JwksFetched {
                url: &self.url,
                outcome: Err(&e),
            }
            .emit(&self.metrics),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?;
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect())
    }
}

/// What `flux-gateway token` puts in a development token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub subject: String,
    pub scopes: Vec<String>,
    pub ttl: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Mints an HS256 token with `secret`, for local testing against a gateway that shares it.
pub fn mint_hs256(
    secret: &Secret,
    scope_claim: &str,
    request: &TokenRequest,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let mut claims = Map::new();
    claims.insert("sub".into(), request.subject.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + request.ttl.as_secs()).into());
    if !request.scopes.is_empty() {
        claims.insert(scope_claim.into(), request.scopes.join(" ").into());
    }
    if let Some(audience) = &request.audience {
        claims.insert("aud".into(), audience.clone().into());
    }
    if let Some(issuer) = &request.issuer {
        claims.insert("iss".into(), issuer.clone().into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes())?,
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(extra: &str) -> Authenticator {
        let config = crate::config::Config::from_toml(&format!(
            "[auth]\nmode = \"jwt\"\nhs256_secret = \"s3cret\"\nleeway_secs = 0\n{extra}"
        ))
        .unwrap();
        Authenticator::new(&config.auth, Arc::new(Metrics::default())).unwrap()
    }

    fn token(secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_refusal_has_its_reason() {
        let auth = authenticator("audience = \"flux\"\nissuer = \"idp\"\n");
        let exp = unix_now() + 60;
        let good = json_claims("alice", exp, "flux", "idp");
        let principal = auth.verify(&token("s3cret", good.clone())).await.unwrap();
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.scopes, ["stocks", "news"]);
        assert!(principal.has_scope("stocks") && !principal.has_scope("crypto"));

        let cases = [
            (
                token("s3cret", json_claims("alice", exp - 120, "flux", "idp")),
                AuthRefusal::Expired,
            ),
            (token("other", good.clone()), AuthRefusal::BadSignature),
            (
                token("s3cret", json_claims("alice", exp, "web", "idp")),
                AuthRefusal::WrongAudience,
            ),
            (
                token("s3cret", json_claims("alice", exp, "flux", "evil")),
                AuthRefusal::WrongIssuer,
            ),
            (
                token(
                    "s3cret",
                    serde_json::json!({"sub": "a", "aud": "flux", "iss": "idp"}),
                ),
                AuthRefusal::Malformed,
            ),
            ("not-a-jwt".to_owned(), AuthRefusal::Malformed),
            (
                // {"alg":"none","typ":"JWT"}: unsigned tokens are never accepted.
                format!(
                    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good.to_string())
                ),
                AuthRefusal::Algorithm,
            ),
        ];
        for (token, refusal) in cases {
            assert_eq!(auth.verify(&token).await, Err(refusal), "{token}");
        }
        assert_eq!(
            auth.authenticate(None).await,
            Err(AuthRefusal::Missing),
            "no token"
        );
    }

    #[tokio::test]
    async fn minted_tokens_verify() {
        let auth = authenticator("");
        let minted = mint_hs256(
            &Secret::new("s3cret"),
            "scope",
            &TokenRequest {
                subject: "bob".into(),
                scopes: vec!["stocks".into()],
                ttl: Duration::from_secs(60),
                audience: None,
                issuer: None,
            },
        )
        .unwrap();
        let principal = auth.verify(&minted).await.unwrap();
        assert_eq!(principal.subject, "bob");
        assert_eq!(principal.scopes, ["stocks"]);
    }

    #[test]
    fn jwt_mode_needs_a_key() {
        let config = crate::config::Config::from_toml("[auth]\nmode = \"jwt\"\n").unwrap();
        let err = Authenticator::new(&config.auth, Arc::new(Metrics::default()))
            .err()
            .unwrap();
        assert!(matches!(err, AuthSetupError::NoKeys));
    }

    fn json_claims(sub: &str, exp: u64, aud: &str, iss: &str) -> Value {
        serde_json::json!({ "sub": sub, "exp": exp, "aud": aud, "iss": iss, "scope": "stocks news" })
    }
}
