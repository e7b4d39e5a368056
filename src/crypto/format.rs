//! The text stored in a secret column, and the associated data that binds it to its place.
//!
//! `v2:<key id: 16 hex digits>:<base64(nonce ‖ ciphertext ‖ tag)>` is written today;
//! `v1:<base64(nonce ‖ ciphertext ‖ tag)>` (no key id, no associated data) was written before
//! key rotation existed and is only read. The version and key id are readable without the key,
//! so a rotation can tell which values are still to do, and decryption picks its key without
//! trying them all.

use base64::{Engine, engine::general_purpose::STANDARD};

use super::{Binding, KeyId, NONCE_LEN};

const V1: &str = "v1:";
const V2: &str = "v2:";

/// A stored value, parsed but not yet decrypted.
pub(super) enum Stored {
    /// Legacy: any configured key may have sealed it, without associated data.
    V1 {
        /// Nonce, then ciphertext and tag.
        sealed: Vec<u8>,
    },
    /// Sealed by the key `key_id`, bound to its tenant and field.
    V2 {
        /// Which key sealed it.
        key_id: KeyId,
        /// Nonce, then ciphertext and tag.
        sealed: Vec<u8>,
    },
}

impl Stored {
    /// Parses the stored text; `None` when it is in no known format.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let decode = |b64: &str| {
            STANDARD
                .decode(b64)
                .ok()
                .filter(|sealed| sealed.len() > NONCE_LEN)
        };
        if let Some(rest) = text.strip_prefix(V2) {
            let (id, b64) = rest.split_once(':')?;
            return Some(Self::V2 {
                key_id: KeyId::from_hex(id)?,
                sealed: decode(b64)?,
            });
        }
        let sealed = decode(text.strip_prefix(V1)?)?;
        Some(Self::V1 { sealed })
    }
}

/// The stored text of a value sealed by `key_id`: `sealed` is nonce ‖ ciphertext ‖ tag.
pub(super) fn encode(key_id: KeyId, sealed: &[u8]) -> String {
    format!("{V2}{key_id}:{}", STANDARD.encode(sealed))
}

/// The associated data of a `v2` value: format, key id, table, field and tenant.
///
/// Every part but the last has a fixed set of values and none contains a NUL byte, so the
/// encoding is unambiguous: no other (key, field, tenant) yields the same bytes.
pub(super) fn associated_data(key_id: KeyId, binding: Binding<'_>) -> Vec<u8> {
    [
        b"ai-agents secret v2\0".as_slice(),
        &key_id.0,
        b"\0tenant_configs.",
        binding.field.name().as_bytes(),
        b"\0",
        binding.tenant.as_str().as_bytes(),
    ]
    .concat()
}

/// Splits nonce ‖ ciphertext ‖ tag (the length was checked by [`Stored::parse`]).
pub(super) fn split_nonce(sealed: &[u8]) -> ([u8; NONCE_LEN], &[u8]) {
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let mut fixed = [0; NONCE_LEN];
    fixed.copy_from_slice(nonce);
    (fixed, rest)
}
