//! Bearer authentication for `/api/v1`.
//!
//! The token is compared in constant time, so response timing does not reveal how much of a
//! guessed token was right. It is checked twice, by the same [`token_matches`]: first by
//! [`TokenGate`](super::middleware::TokenGate) from the headers alone, before anything reads or
//! waits for the body (a client without the token cannot hold the server busy with a slow
//! body), then by each operation's [`AdminAuth`], which also documents the scheme in OpenAPI.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use subtle::ConstantTimeEq;

use secrecy::{ExposeSecret, SecretString};

/// The configured admin token, stored in the request data by the router.
#[derive(Clone)]
pub struct AdminToken(pub SecretString);

/// `Authorization: Bearer <AI_AGENTS_ADMIN_TOKEN>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "check_token")]
pub struct AdminAuth(());

async fn check_token(req: &Request, bearer: Bearer) -> Option<()> {
    let expected = req.data::<AdminToken>()?;
    token_matches(&bearer.token, &expected.0).then_some(())
}

/// Whether `presented` is the admin token, compared in constant time.
pub fn token_matches(presented: &str, expected: &SecretString) -> bool {
    presented
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into()
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        let token = SecretString::from("s3cret".to_owned());
        assert!(token_matches("s3cret", &token));
        assert!(!token_matches("s3cre", &token));
    }
}
