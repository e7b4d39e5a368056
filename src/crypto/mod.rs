//! Encryption of tenant secrets at rest (AES-256-GCM), bound to their row, with key rotation.
//!
//! A stored value (see [`format`]) carries the id of the key that sealed it and is sealed with
//! associated data naming its tenant and field ([`Binding`]). So:
//! - a value copied into another tenant's row, or from one secret column to the other, fails
//!   authentication instead of decrypting under the wrong owner;
//! - the key id, derived from the key by HKDF-SHA256 (it names the key and reveals nothing of
//!   it), picks the key to decrypt with and tells a rotation which values are still to do.
//!
//! A [`Keyring`] holds the current key (`AI_AGENTS_ENCRYPTION_KEY`), which seals every new
//! value, and old keys (`AI_AGENTS_ENCRYPTION_OLD_KEYS`), which still open what they sealed.
//! Rotating is: new key current, old key moved to the old ones, `ai-agents-api secrets rotate`
//! (which re-seals every value not yet under the current key), then the old key dropped.
//! Values written before key ids existed (`v1:`, no associated data) are still read with any
//! configured key, and `secrets rotate` rewrites them.

pub mod dev_key;
mod format;

use std::fmt;

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretString, zeroize::Zeroizing};
use sha2::Sha256;

use crate::domain::TenantId;
use format::Stored;

const NONCE_LEN: usize = 12;

/// A secret column of `tenant_configs`. Its name is part of the associated data, so a value
/// sealed for one field does not open as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretField {
    /// The tenant's service desk API key.
    ServicedeskApiKey,
    /// The secret that signs the service desk's webhooks.
    WebhookSigningSecret,
}

impl SecretField {
    /// Every secret field, in column order.
    pub const ALL: [Self; 2] = [Self::ServicedeskApiKey, Self::WebhookSigningSecret];

    /// The field's name in the API (and in reports); the column adds `_encrypted`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ServicedeskApiKey => "servicedesk_api_key",
            Self::WebhookSigningSecret => "webhook_signing_secret",
        }
    }
}

impl fmt::Display for SecretField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a stored secret belongs: authenticated with it, never stored inside it.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The tenant whose row holds the value.
    pub tenant: &'a TenantId,
    /// The column that holds it.
    pub field: SecretField,
}

/// Names a key without revealing it: the first 8 bytes of HKDF-SHA256 of the key, shown as
/// 16 hex digits in stored values and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(key: &[u8; 32]) -> Self {
        let mut id = [0; 8];
        Hkdf::<Sha256>::new(None, key)
            .expand(b"ai-agents encryption key id", &mut id)
            .expect("8 bytes is a valid HKDF-SHA256 output length");
        Self(id)
    }

    fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut id = [0; 8];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Why configured keys were refused. Names the key by its place, never by its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The current key is not base64 of exactly 32 bytes.
    #[error("the current key is not the base64 encoding of exactly 32 bytes")]
    Current,
    /// Old key number `position` (from 1) is not base64 of exactly 32 bytes.
    #[error("old key number {position} is not the base64 encoding of exactly 32 bytes")]
    Old {
        /// Its place in the comma-separated list, counting from 1.
        position: usize,
    },
    /// A key appears twice (an old key repeats another, or the current key).
    #[error("a key is given twice: an old key repeats another one or the current key")]
    Duplicate,
}

/// Why the keyring of this process could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A configured key is unusable.
    #[error("the encryption keys are not usable: {0}")]
    Keys(#[from] KeyError),
    /// The development key file could not be read or written.
    #[error("cannot read or create the development encryption key ({})", dev_key::path().display())]
    DevKey(#[source] std::io::Error),
}

/// Why a stored value did not decrypt. Names its row and field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant `{tenant}`, field {field}: {failure}")]
pub struct DecryptError {
    /// The row's tenant.
    pub tenant: TenantId,
    /// The column.
    pub field: SecretField,
    /// What went wrong.
    pub failure: Failure,
}

/// What went wrong with a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Not `v1:` or `v2:` text with a well-formed payload.
    #[error("not a stored secret in a known format")]
    Malformed,
    /// Sealed by a key that is neither the current nor an old key.
    #[error(
        "sealed by key {0}, which is neither AI_AGENTS_ENCRYPTION_KEY nor in AI_AGENTS_ENCRYPTION_OLD_KEYS"
    )]
    UnknownKey(KeyId),
    /// The key is known but the value does not authenticate.
    #[error("does not authenticate: it was sealed for another row or field, or altered")]
    NotAuthentic,
    /// A legacy `v1` value that no configured key opens.
    #[error("legacy v1 value that no configured key decrypts")]
    LegacyUnreadable,
}

/// A stored value could not be sealed (AES-GCM refuses only absurdly long plaintexts).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a secret could not be encrypted")]
pub struct EncryptError;

/// A decrypted value, and whether it is stored the way [`Keyring::encrypt`] would store it now.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub secret: SecretString,
    /// Sealed by the current key in the current format: `secrets rotate` leaves it alone.
    pub current: bool,
}

struct DataKey {
    id: KeyId,
    aead: Aes256Gcm,
}

impl DataKey {
    fn parse(base64: &SecretString) -> Option<Self> {
        let bytes = Zeroizing::new(STANDARD.decode(base64.expose_secret().trim()).ok()?);
        let key: &[u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self {
            id: KeyId::of(key),
            aead: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
        })
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<SecretString> {
        let (nonce, msg) = format::split_nonce(sealed);
        let plaintext = Zeroizing::new(
            self.aead
                .decrypt(&Nonce::from(nonce), Payload { msg, aad })
                .ok()?,
        );
        std::str::from_utf8(&plaintext).ok().map(SecretString::from)
    }
}

/// The keys of this process: one that seals, all that open.
pub struct Keyring {
    current: DataKey,
    old: Vec<DataKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keyring(current {}, {} old)",
            self.current.id,
            self.old.len()
        )
    }
}

impl Keyring {
    /// Builds the keyring from the base64 texts of the current key and the old keys.
    pub fn new(current: &SecretString, old: &[SecretString]) -> Result<Self, KeyError> {
        let current = DataKey::parse(current).ok_or(KeyError::Current)?;
        let old = old
            .iter()
            .enumerate()
            .map(|(i, key)| DataKey::parse(key).ok_or(KeyError::Old { position: i + 1 }))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = vec![current.id];
        for key in &old {
            if ids.contains(&key.id) {
                return Err(KeyError::Duplicate);
            }
            ids.push(key.id);
        }
        Ok(Self { current, old })
    }

    /// Checks keys as [`Keyring::new`] does, when the current key may still be unknown (in
    /// development it is generated later): for configuration, which must refuse bad keys at
    /// start.
    pub fn check(current: Option<&SecretString>, old: &[SecretString]) -> Result<(), KeyError> {
        match current {
            Some(current) => Self::new(current, old).map(drop),
            // A generated key stands in for the unknown current one; only the old keys and
            // their duplicates are checked.
            None => Self::new(&dev_key::generate(), old).map(drop),
        }
    }

    /// The keyring of this process: the configured keys, or, when no current key is
    /// configured (development only: configuration requires one elsewhere), the development
    /// key kept in `.dev/`.
    pub fn load(current: Option<&SecretString>, old: &[SecretString]) -> Result<Self, LoadError> {
        let current = match current {
            Some(key) => key.clone(),
            None => dev_key::load_or_create(&dev_key::path()).map_err(LoadError::DevKey)?,
        };
        Ok(Self::new(&current, old)?)
    }

    /// The id of the key that seals new values.
    pub fn current_key_id(&self) -> KeyId {
        self.current.id
    }

    /// Seals `plaintext` for `binding` with the current key and a fresh random nonce.
    pub fn encrypt(
        &self,
        plaintext: &SecretString,
        binding: Binding<'_>,
    ) -> Result<String, EncryptError> {
        let key = &self.current;
        let nonce = Nonce::generate();
        let aad = format::associated_data(key.id, binding);
        let ciphertext = key
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| EncryptError)?;
        Ok(format::encode(
            key.id,
            &[nonce.as_slice(), &ciphertext].concat(),
        ))
    }

    /// Opens a stored value of `binding`'s row and field.
    pub fn decrypt(&self, stored: &str, binding: Binding<'_>) -> Result<Decrypted, DecryptError> {
        let fail = |failure| DecryptError {
            tenant: binding.tenant.clone(),
            field: binding.field,
            failure,
        };
        match Stored::parse(stored).ok_or_else(|| fail(Failure::Malformed))? {
            Stored::V2 { key_id, sealed } => {
                let key = self
                    .keys()
                    .find(|key| key.id == key_id)
                    .ok_or_else(|| fail(Failure::UnknownKey(key_id)))?;
                let aad = format::associated_data(key_id, binding);
                let secret = key
                    .open(&sealed, &aad)
                    .ok_or_else(|| fail(Failure::NotAuthentic))?;
                Ok(Decrypted {
                    secret,
                    current: key_id == self.current.id,
                })
            }
            Stored::V1 { sealed } => self
                .keys()
                .find_map(|key| key.open(&sealed, b""))
                .map(|secret| Decrypted {
                    secret,
                    current: false,
                })
                .ok_or_else(|| fail(Failure::LegacyUnreadable)),
        }
    }

    /// The current key first, then the old ones.
    fn keys(&self) -> impl Iterator<Item = &DataKey> {
        std::iter::once(&self.current).chain(&self.old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).expect("valid tenant id")
    }

    fn bound(tenant: &TenantId, field: SecretField) -> Binding<'_> {
        Binding { tenant, field }
    }

    fn keyring(current: &SecretString, old: &[&SecretString]) -> Keyring {
        let old: Vec<SecretString> = old.iter().map(|k| (*k).clone()).collect();
        Keyring::new(current, &old).expect("valid keys")
    }

    /// A `v1` value as the code before key ids wrote it: no associated data.
    fn legacy_v1(key: &SecretString, plaintext: &str) -> String {
        let bytes = STANDARD.decode(key.expose_secret()).expect("base64");
        let key: [u8; 32] = bytes.try_into().expect("32 bytes");
        let nonce = Nonce::generate();
        let ciphertext = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key))
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("encrypt");
        format!(
            "v1:{}",
            STANDARD.encode([nonce.as_slice(), &ciphertext].concat())
        )
    }

    #[test]
    fn round_trips_randomises_and_names_the_key() {
        let key = dev_key::generate();
        let keys = keyring(&key, &[]);
        let acme = tenant("acme");
        let at = bound(&acme, SecretField::ServicedeskApiKey);
        let secret = SecretString::from("api-key-123");
        let a = keys.encrypt(&secret, at).expect("encrypt");
        let b = keys.encrypt(&secret, at).expect("encrypt");
        assert_ne!(a, b, "random nonce per value");
        assert!(
            a.starts_with(&format!("v2:{}:", keys.current_key_id())),
            "{a}"
        );
        assert!(!a.contains("api-key-123"));
        assert!(
            !a.contains(key.expose_secret()),
            "the key id is not the key"
        );
        let opened = keys.decrypt(&a, at).expect("decrypt");
        assert_eq!(opened.secret.expose_secret(), "api-key-123");
        assert!(opened.current);
    }

    #[test]
    fn a_value_in_another_row_or_field_does_not_open() {
        let keys = keyring(&dev_key::generate(), &[]);
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let stored = keys
            .encrypt(
                &SecretString::from("acme-key"),
                bound(&acme, SecretField::ServicedeskApiKey),
            )
            .expect("encrypt");
        for (row, field) in [
            (&globex, SecretField::ServicedeskApiKey),
            (&acme, SecretField::WebhookSigningSecret),
        ] {
            let error = keys
                .decrypt(&stored, bound(row, field))
                .expect_err("moved value must not open");
            assert_eq!(error.failure, Failure::NotAuthentic);
            let text = error.to_string();
            assert!(
                text.contains(row.as_str()) && text.contains(field.name()),
                "{text}"
            );
            assert!(
                !text.contains(&stored) && !text.contains("acme-key"),
                "{text}"
            );
        }
    }

    #[test]
    fn old_keys_open_and_mark_values_for_rotation() {
        let (old_key, new_key) = (dev_key::generate(), dev_key::generate());
        let acme = tenant("acme");
        let at = bound(&acme, SecretField::WebhookSigningSecret);
        let before = keyring(&old_key, &[]);
        let stored = before
            .encrypt(&SecretString::from("wh"), at)
            .expect("encrypt");

        let rotating = keyring(&new_key, &[&old_key]);
        let opened = rotating.decrypt(&stored, at).expect("old key opens");
        assert_eq!(opened.secret.expose_secret(), "wh");
        assert!(!opened.current, "sealed by an old key");

        let after = keyring(&new_key, &[]);
        let error = after.decrypt(&stored, at).expect_err("old key dropped");
        assert_eq!(error.failure, Failure::UnknownKey(before.current_key_id()));
        assert!(
            error
                .to_string()
                .contains(&before.current_key_id().to_string())
        );
    }

    #[test]
    fn legacy_v1_values_open_with_any_configured_key() {
        let (old_key, new_key) = (dev_key::generate(), dev_key::generate());
        let acme = tenant("acme");
        let at = bound(&acme, SecretField::ServicedeskApiKey);
        let stored = legacy_v1(&old_key, "legacy");
        let opened = keyring(&new_key, &[&old_key])
            .decrypt(&stored, at)
            .expect("v1 with an old key");
        assert_eq!(opened.secret.expose_secret(), "legacy");
        assert!(!opened.current, "v1 is always rewritten");
        let error = keyring(&new_key, &[])
            .decrypt(&stored, at)
            .expect_err("no key for it");
        assert_eq!(error.failure, Failure::LegacyUnreadable);
    }

    #[test]
    fn tampered_and_malformed_values_are_refused() {
        let keys = keyring(&dev_key::generate(), &[]);
        let acme = tenant("acme");
        let at = bound(&acme, SecretField::ServicedeskApiKey);
        let stored = keys.encrypt(&SecretString::from("x"), at).expect("encrypt");
        let mut tampered = stored.clone();
        tampered.pop();
        tampered.push(if stored.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            keys.decrypt(&tampered, at).expect_err("tampered").failure,
            Failure::NotAuthentic
        );
        let id = keys.current_key_id().to_string();
        for text in [
            "plain".to_owned(),
            "v1:AAAA".to_owned(),
            "v2:AAAA".to_owned(),
            format!("v2:{id}"),
            format!("v2:{id}:not base64!"),
            format!("v2:{}:{}", &id[..15], &stored[20..]),
            "v3:x:y".to_owned(),
        ] {
            assert_eq!(
                keys.decrypt(&text, at).expect_err(&text).failure,
                Failure::Malformed,
                "{text}"
            );
        }
    }

    #[test]
    fn bad_and_repeated_keys_are_refused_by_place() {
        let good = dev_key::generate();
        let other = dev_key::generate();
        let bad = [
            SecretString::from("not base64!"),
            SecretString::from("AAAA"),
        ];
        assert_eq!(Keyring::new(&bad[0], &[]).map(drop), Err(KeyError::Current));
        assert_eq!(
            Keyring::new(&good, &[other.clone(), bad[1].clone()]).map(drop),
            Err(KeyError::Old { position: 2 })
        );
        assert_eq!(
            Keyring::new(&good, std::slice::from_ref(&good)).map(drop),
            Err(KeyError::Duplicate)
        );
        assert_eq!(
            Keyring::new(&good, &[other.clone(), other.clone()]).map(drop),
            Err(KeyError::Duplicate)
        );
        assert_eq!(
            Keyring::check(None, &[other.clone(), other.clone()]),
            Err(KeyError::Duplicate)
        );
        assert_eq!(Keyring::check(None, &[other]), Ok(()));
        let error = Keyring::new(&good, &[bad[0].clone()])
            .map(drop)
            .expect_err("not base64");
        assert!(!error.to_string().contains("not base64!"));
    }

    #[test]
    fn key_ids_are_stable_hex_and_differ_per_key() {
        let key = SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        let id = keyring(&key, &[]).current_key_id();
        assert_eq!(id, keyring(&key, &[]).current_key_id());
        assert_eq!(KeyId::from_hex(&id.to_string()), Some(id));
        assert_eq!(id.to_string().len(), 16);
        assert_ne!(id, keyring(&dev_key::generate(), &[]).current_key_id());
        assert_eq!(KeyId::from_hex("zz00000000000000"), None);
        assert!(!format!("{:?}", keyring(&key, &[])).contains(key.expose_secret()));
    }
}
