//! The development key: generated on first use and kept in the git-ignored `.dev/`.
//!
//! Development must not need a hand-made key, yet secrets written yesterday must still decrypt
//! today, so the generated key is kept in a file (mode 0600) that the API and the `secrets`
//! subcommands both read.

use std::{fs, io, path::PathBuf};

use aes_gcm::{Aes256Gcm, Key, aead::Generate};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};

/// Where the development encryption key is kept: `$AI_AGENTS_DEV_DIR/encryption.key`, else
/// `.dev/encryption.key`.
pub fn path() -> PathBuf {
    std::env::var_os("AI_AGENTS_DEV_DIR")
        .map_or_else(|| PathBuf::from(".dev"), PathBuf::from)
        .join("encryption.key")
}

/// Generates a new random key, base64-encoded, as `AI_AGENTS_ENCRYPTION_KEY` expects.
pub fn generate() -> SecretString {
    SecretString::from(STANDARD.encode(Key::<Aes256Gcm>::generate().as_slice()))
}

/// Reads the development key from `path`, creating it (mode 0600) on first use.
pub fn load_or_create(path: &std::path::Path) -> io::Result<SecretString> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(SecretString::from(text.trim())),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let key = generate();
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

    #[test]
    fn is_created_once() {
        let dir = std::env::temp_dir().join(format!("ai-agents-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("encryption.key");
        let first = load_or_create(&path).expect("create");
        let second = load_or_create(&path).expect("reuse");
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert!(crate::crypto::Keyring::new(&first, &[]).is_ok());
        fs::remove_dir_all(dir).ok();
    }
}
