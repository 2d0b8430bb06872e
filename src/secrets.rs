//! Secrets at rest: webhook signing secrets are stored sealed with AES-256-GCM under a key
//! from configuration (`webhook_secret_keys`), and opened only to sign a delivery.
//!
//! Keys are written `<id>:<64 hex digits>`; the first seals, every one opens, so a key is
//! rotated by putting a new one first and keeping the old one until `serve` has re-sealed every
//! secret under the new one (it does at start-up; [`reseal_webhook_secrets`]). A sealed secret
//! is stored as `enc:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`; the
//! associated data is the owning customer's id, so a sealed secret copied to another customer's
//! endpoint does not open. Without
//! keys, secrets are stored as they are (and `/readyz` says so outside dev mode).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::fmt;

const PREFIX: &str = "enc:v1:";

/// The keys secrets are sealed with; the first seals.
pub struct SecretBox {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "SecretBox({ids:?})")
    }
}

impl SecretBox {
    /// Keys from configuration (`<id>:<64 hex digits>` each); none: secrets stay as they are.
    pub fn new(specs: &[Secret]) -> anyhow::Result<Self> {
        let mut keys = Vec::with_capacity(specs.len());
        for spec in specs {
            let (id, hex_key) = spec.expose().split_once(':').ok_or_else(|| {
                anyhow::anyhow!("webhook_secret_keys: each key is `<id>:<64 hex digits>`")
            })?;
            let id = id.trim();
            anyhow::ensure!(
                !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "webhook_secret_keys: key ids use letters, digits, '-' and '_'"
            );
            anyhow::ensure!(
                keys.iter().all(|(other, _)| other != id),
                "webhook_secret_keys: key id {id:?} appears twice"
            );
            let bytes = hex::decode(hex_key.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "webhook_secret_keys: key {id:?} must be 64 hex digits (32 bytes)"
                    )
                })?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| anyhow::anyhow!("webhook_secret_keys: key {id:?} is not usable"))?;
            keys.push((id.to_owned(), LessSafeKey::new(key)));
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// No keys: secrets are stored as they are.
    pub fn plaintext() -> Self {
        Self {
            keys: Vec::new(),
            rng: SystemRandom::new(),
        }
    }

    pub fn encrypts(&self) -> bool {
        !self.keys.is_empty()
    }

    /// `secret` as stored for an endpoint of customer `owner`: sealed under the current key (if any).
    pub fn seal(&self, owner: i64, secret: &str) -> String {
        let Some((id, key)) = self.keys.first() else {
            return secret.to_owned();
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(owner.to_be_bytes()),
            &mut data,
        )
        .expect("sealing cannot fail for short secrets");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&data);
        format!("{PREFIX}{id}:{}", B64.encode(blob))
    }

    /// The secret of an endpoint of customer `owner` from its stored form.
    pub fn open(&self, owner: i64, stored: &str) -> Result<String, String> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (id, blob) = rest.split_once(':').ok_or("a sealed secret is malformed")?;
        let (_, key) =
            self.keys.iter().find(|(k, _)| k == id).ok_or_else(|| {
                format!("the key {id:?} that sealed this secret is not configured")
            })?;
        let blob = B64
            .decode(blob)
            .map_err(|_| "a sealed secret is malformed".to_owned())?;
        if blob.len() < NONCE_LEN {
            return Err("a sealed secret is malformed".into());
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let mut data = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_owned())?;
        let plain = key
            .open_in_place(nonce, Aad::from(owner.to_be_bytes()), &mut data)
            .map_err(|_| "a sealed secret does not open (wrong key or endpoint)".to_owned())?;
        String::from_utf8(plain.to_vec()).map_err(|_| "a sealed secret is not text".to_owned())
    }

    /// Whether a stored secret should be sealed again: stored plain while keys exist, or sealed
    /// under a key that is no longer the first.
    pub fn needs_reseal(&self, stored: &str) -> bool {
        let Some((current, _)) = self.keys.first() else {
            return false;
        };
        match stored.strip_prefix(PREFIX) {
            None => true,
            Some(rest) => !rest.starts_with(&format!("{current}:")),
        }
    }
}

/// Seals every webhook secret stored plain, or under a key other than the current one, with
/// the current key; returns how many were sealed. Run at start-up (rotation, first keys).
pub async fn reseal_webhook_secrets(pool: &PgPool, secrets: &SecretBox) -> anyhow::Result<u64> {
    if !secrets.encrypts() {
        return Ok(0);
    }
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("select id, customer_id, secret from webhook_endpoints")
            .fetch_all(pool)
            .await?;
    let mut sealed = 0;
    for (id, customer, stored) in rows {
        if !secrets.needs_reseal(&stored) {
            continue;
        }
        let plain = secrets
            .open(customer, &stored)
            .map_err(|e| anyhow::anyhow!("webhook endpoint {id}: {e}"))?;
        let done =
            sqlx::query("update webhook_endpoints set secret = $3 where id = $1 and secret = $2")
                .bind(id)
                .bind(&stored)
                .bind(secrets.seal(customer, &plain))
                .execute(pool)
                .await?;
        sealed += done.rows_affected();
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> Secret {
        Secret::new(format!("{id}:{}", hex::encode([byte; 32])))
    }

    #[test]
    fn seals_opens_and_rotates() {
        let old = SecretBox::new(&[key("k1", 1)]).unwrap();
        let sealed = old.seal(7, "whsec_abc");
        assert!(sealed.starts_with("enc:v1:k1:") && !sealed.contains("whsec_abc"));
        assert_eq!(old.open(7, &sealed).unwrap(), "whsec_abc");
        // Bound to its customer.
        assert!(old.open(8, &sealed).is_err());
        // Rotation: the new key seals, the old one still opens, and old secrets want resealing.
        let new = SecretBox::new(&[key("k2", 2), key("k1", 1)]).unwrap();
        assert_eq!(new.open(7, &sealed).unwrap(), "whsec_abc");
        assert!(new.needs_reseal(&sealed));
        let resealed = new.seal(7, "whsec_abc");
        assert!(resealed.starts_with("enc:v1:k2:") && !new.needs_reseal(&resealed));
        // Without the key that sealed it, a secret does not open.
        let only_new = SecretBox::new(&[key("k2", 2)]).unwrap();
        assert!(only_new.open(7, &sealed).is_err());
        // Plain secrets pass through, and want sealing once there are keys.
        assert_eq!(SecretBox::plaintext().seal(7, "x"), "x");
        assert!(new.needs_reseal("whsec_plain"));
        assert!(!SecretBox::plaintext().needs_reseal("whsec_plain"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in ["nocolon", "k:abcd", ":00", "k1:zz"] {
            assert!(SecretBox::new(&[Secret::new(bad)]).is_err(), "{bad}");
        }
        assert!(SecretBox::new(&[key("k", 1), key("k", 2)]).is_err());
    }
}

/// A string that must never reach a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
