//! Encryption of tenant secrets at rest (AES-256-GCM).
//!
//! A stored value looks like `v1:<base64(nonce ‖ ciphertext ‖ tag)>`. The nonce is random per
//! value, so the same plaintext never yields the same ciphertext twice. The `v1` prefix names
//! the key generation: a later key rotation adds `v2` and keeps decrypting `v1` with the old
//! key, without rewriting every row at once.

use std::{fs, io, path::Path};

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, Generate, KeyInit},
};
use base64::{Engine, engine::general_purpose::STANDARD};

use secrecy::{ExposeSecret, SecretString};

const VERSION_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// Why a value could not be encrypted or decrypted. Carries no key or plaintext material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not base64 of exactly 32 bytes.
    #[error("the encryption key must be base64 of exactly 32 bytes")]
    BadKey,
    /// The stored value is not in the `v1:` format or fails authentication.
    #[error("a stored secret could not be decrypted")]
    Undecryptable,
}

/// A cipher bound to the service's encryption key.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    /// Builds a cipher from the base64 text of `AI_AGENTS_ENCRYPTION_KEY`.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            aead: Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)),
        })
    }

    /// Encrypts one secret with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &SecretString) -> Result<String, CryptoError> {
        let nonce = Nonce::generate();
        let ciphertext = self
            .aead
            .encrypt(&nonce, plaintext.expose_secret().as_bytes())
            .map_err(|_| CryptoError::Undecryptable)?;
        let mut packed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        packed.extend_from_slice(nonce.as_slice());
        packed.extend_from_slice(&ciphertext);
        Ok(format!("{VERSION_PREFIX}{}", STANDARD.encode(packed)))
    }

    /// Decrypts a value produced by [`Cipher::encrypt`].
    pub fn decrypt(&self, stored: &str) -> Result<SecretString, CryptoError> {
        let encoded = stored
            .strip_prefix(VERSION_PREFIX)
            .ok_or(CryptoError::Undecryptable)?;
        let packed = STANDARD
            .decode(encoded)
            .map_err(|_| CryptoError::Undecryptable)?;
        if packed.len() < NONCE_LEN {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, ciphertext) = packed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Undecryptable)?;
        let plaintext = self
            .aead
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Undecryptable)
    }
}

/// Generates a new random key, base64-encoded, as `AI_AGENTS_ENCRYPTION_KEY` expects.
pub fn generate_key() -> SecretString {
    SecretString::from(STANDARD.encode(Key::<Aes256Gcm>::generate().as_slice()))
}

/// Reads the development key from `path`, creating it (mode 0600) on first use.
///
/// Development must not need a hand-made key, yet secrets written yesterday must still decrypt
/// today, so the generated key is kept in the git-ignored local directory.
pub fn load_or_create_dev_key(path: &Path) -> io::Result<SecretString> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(SecretString::from(text.trim())),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let key = generate_key();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            io::Write::write_all(&mut file, key.expose_secret().as_bytes())?;
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(SecretString::from(fs::read_to_string(path)?.trim()))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::from_base64(generate_key().expose_secret()).expect("generated key is valid")
    }

    #[test]
    fn round_trips_and_randomises() {
        let cipher = cipher();
        let secret = SecretString::from("api-key-123");
        let a = cipher.encrypt(&secret).expect("encrypt");
        let b = cipher.encrypt(&secret).expect("encrypt");
        assert_ne!(a, b, "random nonce per value");
        assert!(a.starts_with("v1:"));
        assert!(!a.contains("api-key-123"));
        assert_eq!(
            cipher.decrypt(&a).expect("decrypt").expose_secret(),
            "api-key-123"
        );
    }

    #[test]
    fn rejects_tampering_and_other_keys() {
        let a = cipher();
        let stored = a.encrypt(&SecretString::from("x")).expect("encrypt");
        assert!(cipher().decrypt(&stored).is_err(), "another key");
        let mut tampered = stored.clone();
        tampered.pop();
        tampered.push(if stored.ends_with('A') { 'B' } else { 'A' });
        assert!(a.decrypt(&tampered).is_err());
        assert!(a.decrypt("plain").is_err());
        assert!(a.decrypt("v1:AAAA").is_err());
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Cipher::from_base64("not base64!").is_err());
        assert!(Cipher::from_base64("AAAA").is_err());
    }

    #[test]
    fn dev_key_is_created_once() {
        let dir = std::env::temp_dir().join(format!("ai-agents-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("encryption.key");
        let first = load_or_create_dev_key(&path).expect("create");
        let second = load_or_create_dev_key(&path).expect("reuse");
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert!(Cipher::from_base64(first.expose_secret()).is_ok());
        fs::remove_dir_all(dir).ok();
    }
}
