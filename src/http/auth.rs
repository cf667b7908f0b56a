//! Who is calling: admin JWTs (`POST /login-jwt`), admin API keys from config, and
//! per-instance tokens (returned when an instance is created, stored hashed).
//!
//! Every secret comparison is constant time: API keys and login credentials are
//! compared as SHA-256 digests with `subtle`, JWT signatures with `Mac::verify_slice`,
//! and instance tokens are looked up by their SHA-256 hash (an attacker controls no
//! prefix of it). Nothing here logs a token or a password.

use crate::config::AuthConfig;
use crate::store::settings::{Settings, Tokens};
use base64::Engine;
use sea_orm::DbErr;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Prefix of instance tokens (tells them apart from JWTs and API keys at a glance).
pub const INSTANCE_TOKEN_PREFIX: &str = "swa_";
const PBKDF2_ROUNDS: u32 = 100_000;
/// `iss` and `aud` of the JWTs this server issues; tokens without them are refused.
pub const JWT_ISSUER: &str = "sudevwa";
pub const JWT_AUDIENCE: &str = "sudevwa-admin";
/// The longest JWT lifetime accepted (`auth.jwt_ttl_secs` cannot exceed it).
const MAX_JWT_TTL_SECS: i64 = 30 * 86400;
/// Clock skew tolerated on `iat` and `nbf`.
const JWT_LEEWAY_SECS: i64 = 60;
/// Password hashes computed at once (each takes a core for ~0.1 s), off the async
/// workers; further logins wait for a slot.
const HASHING_SLOTS: usize = 2;
/// A token's `last_used_at` is written at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Full access: a login JWT or an admin API key.
    Admin { username: String },
    /// One instance's token: that instance only.
    Instance { instance_id: String },
}

impl Principal {
    /// May this caller act on `instance_id`?
    pub fn may_access(&self, instance_id: &str) -> bool {
        match self {
            Self::Admin { .. } => true,
            Self::Instance { instance_id: own } => {
                own.as_bytes().ct_eq(instance_id.as_bytes()).into()
            }
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin { .. })
    }

    /// Name reported by `/api/validate`.
    pub fn username(&self) -> String {
        match self {
            Self::Admin { username } => username.clone(),
            Self::Instance { instance_id } => format!("instance:{instance_id}"),
        }
    }
}

/// Why a token was refused (the text is safe to return).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization header with a Bearer token is required")]
    Missing,
    #[error("Token is invalid")]
    Invalid,
    #[error("Token has expired")]
    Expired,
    #[error("Authentication is temporarily unavailable")]
    Unavailable,
}

enum Login {
    /// Credentials from config/env.
    Configured {
        user_digest: [u8; 32],
        pass_digest: [u8; 32],
    },
    /// Generated on first start; the password is kept as a PHC string
    /// (`$pbkdf2-sha256$i=ROUNDS,l=32$SALT$HASH`): its parameters are read from it.
    Stored { username: String, phc: String },
}

/// The authenticator of this server.
pub struct Auth {
    jwt_key: Vec<u8>,
    jwt_ttl: Duration,
    login: std::sync::Arc<Login>,
    admin_keys: Vec<[u8; 32]>,
    tokens: Tokens,
    hashing: std::sync::Arc<tokio::sync::Semaphore>,
    /// When each instance token's `last_used_at` was last written (by token hash).
    touched: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<String>,
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// A PHC string for `password`: PBKDF2-SHA256, [`PBKDF2_ROUNDS`], a random salt.
fn hash_password(password: &str) -> Option<String> {
    use pbkdf2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).ok()?;
    let params = pbkdf2::Params {
        rounds: PBKDF2_ROUNDS,
        output_length: 32,
    };
    let alg = pbkdf2::Algorithm::Pbkdf2Sha256.ident();
    let hash = pbkdf2::Pbkdf2
        .hash_password_customized(password.as_bytes(), Some(alg), None, params, &salt)
        .ok()?;
    Some(hash.to_string())
}

/// The stored login hash as a checked PHC string: a PBKDF2-SHA256 PHC string, or the
/// older `pbkdf2-sha256$ROUNDS$SALT$HEX` (rewritten as the PHC string of the same
/// hash, so existing logins keep working). `None` for anything else, so a damaged
/// row stops the start instead of failing every login.
fn parse_stored(username: String, stored: &str) -> Option<Login> {
    use pbkdf2::password_hash::PasswordHash;
    let phc = if stored.starts_with('$') {
        stored.to_string()
    } else {
        legacy_to_phc(stored)?
    };
    let parsed = PasswordHash::new(&phc).ok()?;
    let ok = parsed.algorithm == pbkdf2::Algorithm::Pbkdf2Sha256.ident()
        && parsed.salt.is_some()
        && parsed.hash.is_some_and(|h| h.len() == 32)
        && pbkdf2::Params::try_from(&parsed).is_ok_and(|p| p.rounds > 0);
    ok.then_some(Login::Stored { username, phc })
}

/// `pbkdf2-sha256$ROUNDS$SALT$HEX` (SALT used as its ASCII bytes) as a PHC string.
fn legacy_to_phc(stored: &str) -> Option<String> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut parts = stored.split('$');
    let (scheme, rounds, salt, hash) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if scheme != "pbkdf2-sha256" || parts.next().is_some() || salt.is_empty() {
        return None;
    }
    let rounds: u32 = rounds.parse().ok().filter(|r| *r > 0)?;
    let hash = hex::decode(hash).ok().filter(|h| h.len() == 32)?;
    let (salt, hash) = (STANDARD_NO_PAD.encode(salt), STANDARD_NO_PAD.encode(hash));
    Some(format!("$pbkdf2-sha256$i={rounds},l=32${salt}${hash}"))
}

/// SHA-256 hex of an instance token, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(digest(token.as_bytes()))
}

/// A fresh instance token and its stored hash.
pub fn new_instance_token() -> (String, String) {
    let token = format!("{INSTANCE_TOKEN_PREFIX}{}", random_hex(32));
    let hash = token_hash(&token);
    (token, hash)
}

impl Auth {
    /// Loads or generates the JWT secret and login credentials. Generated credentials
    /// are printed once on stdout, at the start that creates them.
    pub async fn init(
        cfg: &AuthConfig,
        settings: &Settings,
        tokens: Tokens,
    ) -> Result<Self, DbErr> {
        let jwt_key = match &cfg.jwt_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => settings
                .get_or_insert("jwt_secret", &random_hex(32))
                .await?
                .into_bytes(),
        };
        let login = match (&cfg.login_username, &cfg.login_password) {
            (Some(u), Some(p)) => Login::Configured {
                user_digest: digest(u.as_bytes()),
                pass_digest: digest(p.as_bytes()),
            },
            (user, _) => {
                let username = user.clone().unwrap_or_else(|| "admin".to_string());
                let key = format!("login:{username}");
                let stored = match settings.get(&key).await? {
                    Some(v) => v,
                    None => {
                        let password = random_hex(12);
                        let value = hash_password(&password).ok_or_else(|| {
                            DbErr::Custom("hashing the generated login password failed".into())
                        })?;
                        let kept = settings.get_or_insert(&key, &value).await?;
                        if kept == value {
                            println!(
                                "generated login for POST /login-jwt (shown once, stored hashed): username={username} password={password}"
                            );
                        }
                        kept
                    }
                };
                parse_stored(username, &stored).ok_or_else(|| {
                    DbErr::Custom(format!(
                        "the stored login hash (settings key {key:?}) is corrupt: expected \
                         a $pbkdf2-sha256$... PHC string; delete the row to generate a new login"
                    ))
                })?
            }
        };
        Ok(Self {
            jwt_key,
            jwt_ttl: cfg.jwt_ttl,
            login: std::sync::Arc::new(login),
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(HASHING_SLOTS)),
            touched: Default::default(),
            admin_keys: cfg
                .admin_api_keys
                .iter()
                .map(|k| digest(k.as_bytes()))
                .collect(),
            tokens,
        })
    }

    /// Checks login credentials; on success returns a JWT. Password hashing runs on
    /// the blocking pool, at most [`HASHING_SLOTS`] at once, never on the async
    /// workers (a burst of logins cannot stall other requests).
    pub async fn login(&self, username: &str, password: &str) -> Option<String> {
        let ok = match &*self.login {
            Login::Configured { .. } => Self::check_login(&self.login, username, password),
            Login::Stored { .. } => {
                let _slot = self.hashing.acquire().await.ok()?;
                let (login, u, p) = (
                    self.login.clone(),
                    username.to_string(),
                    password.to_string(),
                );
                tokio::task::spawn_blocking(move || Self::check_login(&login, &u, &p))
                    .await
                    .unwrap_or(false)
            }
        };
        ok.then(|| self.issue_jwt(username))
    }

    /// Whether `username` is the login's user (the only account logins can guess at;
    /// the per-account backoff tracks nothing else, so sprayed names cannot evict it).
    pub fn is_login_user(&self, username: &str) -> bool {
        let d = digest(username.as_bytes());
        match &*self.login {
            Login::Configured { user_digest, .. } => d.ct_eq(user_digest).into(),
            Login::Stored { username: u, .. } => d.ct_eq(&digest(u.as_bytes())).into(),
        }
    }

    fn check_login(login: &Login, username: &str, password: &str) -> bool {
        match login {
            Login::Configured {
                user_digest,
                pass_digest,
            } => {
                let u = digest(username.as_bytes()).ct_eq(user_digest);
                let p = digest(password.as_bytes()).ct_eq(pass_digest);
                bool::from(u & p)
            }
            Login::Stored {
                username: user,
                phc,
            } => {
                use pbkdf2::password_hash::{PasswordHash, PasswordVerifier};
                let u = digest(username.as_bytes()).ct_eq(&digest(user.as_bytes()));
                // Parsed at start already; the comparison inside is constant-time.
                let p = PasswordHash::new(phc).is_ok_and(|h| {
                    pbkdf2::Pbkdf2
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                });
                bool::from(u) & p
            }
        }
    }

    /// A JWT for `username`, valid for the configured lifetime.
    pub fn issue_jwt(&self, username: &str) -> String {
        self.issue_jwt_at(username, chrono::Utc::now().timestamp())
    }

    /// A JWT issued at `iat` (tests make expired ones with it).
    pub fn issue_jwt_at(&self, username: &str, iat: i64) -> String {
        let claims = Claims {
            username: username.to_string(),
            iat,
            nbf: Some(iat),
            exp: iat + self.jwt_ttl.as_secs() as i64,
            iss: Some(JWT_ISSUER.to_string()),
            aud: Some(JWT_AUDIENCE.to_string()),
        };
        let key = jsonwebtoken::EncodingKey::from_secret(&self.jwt_key);
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        // HS256 over a struct of strings and integers: nothing in it can fail.
        jsonwebtoken::encode(&header, &claims, &key).unwrap_or_default()
    }

    fn verify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_jwt_claims(token).map(|c| Principal::Admin {
            username: c.username,
        })
    }

    /// The expiry (unix seconds) of a JWT this server would accept; `None` for any
    /// other credential. Sockets opened with a JWT close when it passes.
    pub fn jwt_expiry(&self, token: &str) -> Option<i64> {
        self.verify_jwt_claims(token.trim()).ok().map(|c| c.exp)
    }

    fn verify_jwt_claims(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        // Signature (HS256 only: `alg: none` and every other algorithm are refused),
        // issuer, audience and expiry by jsonwebtoken; the rest below.
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_issuer(&[JWT_ISSUER]);
        v.set_audience(&[JWT_AUDIENCE]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = 0;
        v.validate_nbf = false;
        let key = jsonwebtoken::DecodingKey::from_secret(&self.jwt_key);
        let claims = match jsonwebtoken::decode::<Claims>(token, &key, &v) {
            Ok(data) => data.claims,
            Err(e) if *e.kind() == ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
            Err(_) => return Err(AuthError::Invalid),
        };
        let now = chrono::Utc::now().timestamp();
        // Issued in the future, not valid yet, or living longer than any TTL this
        // server hands out: not one of ours.
        if claims.iat > now + JWT_LEEWAY_SECS
            || claims.nbf.is_some_and(|nbf| nbf > now + JWT_LEEWAY_SECS)
            || claims.exp - claims.iat > MAX_JWT_TTL_SECS
        {
            return Err(AuthError::Invalid);
        }
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// Resolves a bearer token to a caller.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() || token.len() > 4096 {
            return Err(AuthError::Invalid);
        }
        if token.starts_with(INSTANCE_TOKEN_PREFIX) {
            let hash = token_hash(token);
            return match self.tokens.instance_of(&hash).await {
                Ok(Some(instance_id)) => {
                    self.touch(hash);
                    Ok(Principal::Instance { instance_id })
                }
                Ok(None) => Err(AuthError::Invalid),
                Err(e) => {
                    tracing::error!(error = %e, "token lookup failed");
                    Err(AuthError::Unavailable)
                }
            };
        }
        let d = digest(token.as_bytes());
        let mut key_match = subtle::Choice::from(0u8);
        for k in &self.admin_keys {
            key_match |= d.ct_eq(k);
        }
        if bool::from(key_match) {
            return Ok(Principal::Admin {
                username: "api-key".to_string(),
            });
        }
        self.verify_jwt(token)
    }

    /// Records a token's use (`last_used_at`), at most once per [`TOUCH_EVERY`] per
    /// token, in the background (a request never waits for it).
    fn touch(&self, hash: String) {
        let now = std::time::Instant::now();
        {
            let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if t.get(&hash)
                .is_some_and(|at| now.duration_since(*at) < TOUCH_EVERY)
            {
                return;
            }
            if t.len() >= 100_000 {
                t.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
            }
            t.insert(hash.clone(), now);
        }
        let tokens = self.tokens.clone();
        tokio::spawn(async move {
            if let Err(e) = tokens.touch(&hash).await {
                tracing::debug!(error = %e, "recording a token's last use failed");
            }
        });
    }

    /// The instance-token store.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Issues and stores a new token for `instance_id`.
    pub async fn issue_instance_token(&self, instance_id: &str) -> Result<String, DbErr> {
        let (token, hash) = new_instance_token();
        self.tokens
            .insert(&random_hex(16), instance_id, &hash)
            .await?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn auth(ttl: u64) -> Auth {
        Auth {
            jwt_key: b"0123456789abcdef0123456789abcdef".to_vec(),
            jwt_ttl: Duration::from_secs(ttl),
            login: std::sync::Arc::new(Login::Configured {
                user_digest: digest(b"u"),
                pass_digest: digest(b"p"),
            }),
            admin_keys: vec![],
            tokens: Tokens::new(sea_orm::DatabaseConnection::default()),
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            touched: Default::default(),
        }
    }

    /// A token signed with the right key but carrying `claims` as given.
    fn signed(a: &Auth, claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(&a.jwt_key);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn jwt_claims_are_checked_beyond_the_signature() {
        let a = auth(3600);
        let now = chrono::Utc::now().timestamp();
        let good = serde_json::json!({"username": "u", "iat": now, "nbf": now, "exp": now + 600,
            "iss": JWT_ISSUER, "aud": JWT_AUDIENCE});
        assert!(a.verify_jwt(&signed(&a, good.clone())).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            signed(&a, c)
        };
        let without = |k: &str| {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove(k);
            signed(&a, c)
        };
        for (what, t) in [
            ("no issuer", without("iss")),
            ("foreign issuer", with("iss", "other".into())),
            ("no audience", without("aud")),
            ("foreign audience", with("aud", "other".into())),
            ("not valid yet", with("nbf", (now + 3600).into())),
            ("issued in the future", with("iat", (now + 3600).into())),
            (
                "lives longer than any TTL",
                with("exp", (now + 400 * 86400).into()),
            ),
        ] {
            assert_eq!(a.verify_jwt(&t), Err(AuthError::Invalid), "{what}");
        }
        assert_eq!(a.jwt_expiry(&signed(&a, good)), Some(now + 600));
        assert_eq!(a.jwt_expiry("swa_abc"), None);
    }

    #[test]
    fn jwt_roundtrip_and_tamper() {
        let a = auth(60);
        let t = a.issue_jwt("u");
        assert_eq!(
            a.verify_jwt(&t),
            Ok(Principal::Admin {
                username: "u".into()
            })
        );
        assert!(Auth::check_login(&a.login, "u", "p"));
        assert!(!Auth::check_login(&a.login, "u", "x"));
        assert!(!Auth::check_login(&a.login, "x", "p"));
        // Flip one character of the payload: the signature no longer matches.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"username":"root","exp":99999999999,"iat":0}"#);
        parts[1] = forged;
        assert_eq!(a.verify_jwt(&parts.join(".")), Err(AuthError::Invalid));
        // alg=none is refused.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            t.split('.').nth(1).unwrap()
        );
        assert_eq!(a.verify_jwt(&none), Err(AuthError::Invalid));
        let old = a.issue_jwt_at("u", chrono::Utc::now().timestamp() - 120);
        assert_eq!(a.verify_jwt(&old), Err(AuthError::Expired));
        assert_eq!(a.verify_jwt("a.b"), Err(AuthError::Invalid));
    }

    #[test]
    fn stored_hashes_are_parsed_strictly() {
        // The older format still reads, as the PHC string of the same hash.
        let salt = "00112233445566778899aabbccddeeff";
        let mut raw = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pw", salt.as_bytes(), 1000, &mut raw);
        let legacy = format!("pbkdf2-sha256$1000${salt}${}", hex::encode(raw));
        let login = parse_stored("u".into(), &legacy).expect("legacy hash");
        assert!(
            matches!(&login, Login::Stored { phc, .. } if phc.starts_with("$pbkdf2-sha256$i=1000,l=32$"))
        );
        assert!(Auth::check_login(&login, "u", "pw"));
        assert!(!Auth::check_login(&login, "u", "px"));
        // New hashes are PHC strings whose parameters are read back.
        let phc = hash_password("secret").unwrap();
        assert!(
            phc.starts_with(&format!("$pbkdf2-sha256$i={PBKDF2_ROUNDS},l=32$")),
            "{phc}"
        );
        let login = parse_stored("u".into(), &phc).expect("PHC hash");
        assert!(Auth::check_login(&login, "u", "secret"));
        assert!(!Auth::check_login(&login, "v", "secret"));
        for bad in [
            "$pbkdf2-sha256$i=0,l=32$c2FsdA$AAAA",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$AAAA",
            "$pbkdf2-sha256$",
        ] {
            assert!(parse_stored("u".into(), bad).is_none(), "{bad:?}");
        }
        for bad in [
            "",
            "pbkdf2-sha256$1000$salt",
            "pbkdf2-sha256$0$salt$00",
            "pbkdf2-sha256$x$salt$00",
            "md5$1000$salt$00",
            "pbkdf2-sha256$1000$$00",
            "pbkdf2-sha256$1000$salt$zz",
            "pbkdf2-sha256$1000$salt$abcd",
        ] {
            assert!(parse_stored("u".into(), bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn instance_principal_is_scoped() {
        let p = Principal::Instance {
            instance_id: "a".into(),
        };
        assert!(p.may_access("a"));
        assert!(!p.may_access("b"));
        assert!(!p.may_access("aa"));
        assert!(Principal::Admin {
            username: "x".into()
        }
        .may_access("b"));
        let (t, h) = new_instance_token();
        assert!(t.starts_with(INSTANCE_TOKEN_PREFIX));
        assert_eq!(token_hash(&t), h);
    }
}
