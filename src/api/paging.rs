//! Opaque keyset cursors.
//!
//! A cursor is the URL-safe base64 of the last item's sort key. Clients treat it as opaque;
//! the server refuses one it cannot decode with a 400 rather than guessing.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::problem::ApiError;
use crate::db::enhancements::PageAfter;

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 50;

/// Encodes a tenant page cursor (the last `tenant_id`).
pub fn tenant_cursor(tenant_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("t:{tenant_id}"))
}

/// Decodes a tenant page cursor.
pub fn parse_tenant_cursor(cursor: &str) -> Result<String, ApiError> {
    decode(cursor)?
        .strip_prefix("t:")
        .map(str::to_owned)
        .ok_or_else(bad_cursor)
}

/// Encodes an enhancement page cursor (the last row's creation time and id).
pub fn enhancement_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("e:{}:{id}", created_at.timestamp_micros()))
}

/// Decodes an enhancement page cursor.
pub fn parse_enhancement_cursor(cursor: &str) -> Result<PageAfter, ApiError> {
    let text = decode(cursor)?;
    let rest = text.strip_prefix("e:").ok_or_else(bad_cursor)?;
    let (micros, id) = rest.split_once(':').ok_or_else(bad_cursor)?;
    let micros: i64 = micros.parse().map_err(|_| bad_cursor())?;
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad_cursor)?;
    let id = Uuid::parse_str(id).map_err(|_| bad_cursor())?;
    Ok(PageAfter { created_at, id })
}

/// An empty `cursor=` means "from the start", like no cursor.
pub fn non_empty(cursor: Option<&str>) -> Option<&str> {
    cursor.filter(|c| !c.is_empty())
}

fn decode(cursor: &str) -> Result<String, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad_cursor())?;
    String::from_utf8(bytes).map_err(|_| bad_cursor())
}

fn bad_cursor() -> ApiError {
    ApiError::bad_request("cursor: not a cursor returned by this API")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(
            parse_tenant_cursor(&tenant_cursor("acme")).ok().as_deref(),
            Some("acme")
        );
        let now = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let id = Uuid::now_v7();
        let page = parse_enhancement_cursor(&enhancement_cursor(now, id)).ok();
        assert_eq!(
            page,
            Some(PageAfter {
                created_at: now,
                id
            })
        );
    }

    #[test]
    fn foreign_cursors_are_refused() {
        assert!(parse_tenant_cursor("%%%").is_err());
        assert!(parse_tenant_cursor(&enhancement_cursor(Utc::now(), Uuid::nil())).is_err());
        assert!(parse_enhancement_cursor(&tenant_cursor("acme")).is_err());
        assert!(parse_enhancement_cursor(&URL_SAFE_NO_PAD.encode("e:x:y")).is_err());
    }
}
