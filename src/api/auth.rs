//! Bearer authentication for `/api/v1`.
//!
//! The token is compared in constant time, so response timing does not reveal how much of a
//! guessed token was right. A failed check becomes a 401 problem in the error middleware.

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
    let matches: bool = bearer
        .token
        .as_bytes()
        .ct_eq(expected.0.expose_secret().as_bytes())
        .into();
    matches.then_some(())
}
