//! A string that must never be printed.
//!
//! Tokens, keys and passwords travel through configuration, logs and error chains. Wrapping them
//! in [`SecretString`] makes the mistake of logging one impossible to write by accident: its
//! `Debug` and `Display` print `***`, and the plain value is reachable only through
//! [`SecretString::expose`], which is easy to grep for.

use std::fmt;

/// A secret value whose formatting never reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value that must stay out of logs and responses.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the few places that must use it (comparison, encryption, URLs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_hides_the_value() {
        let secret = SecretString::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
