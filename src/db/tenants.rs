//! Repository of `tenant_configs`.
//!
//! Secrets are stored as ciphertext by the caller. Only [`stored_secrets`], for the `secrets`
//! maintenance commands, selects them: nothing that reads a tenant for a response can leak them
//! by accident. That is also why [`TenantRow`] is the API's `Tenant` schema as it is (it derives
//! poem-openapi's `Object`): a row without secrets is exactly what the API shows, and one field
//! list serves both.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::scope::{CrossTenantTx, TenantTx};
use crate::crypto::SecretField;

/// A tenant as the API shows it: no secrets.
#[derive(Debug, Clone, poem_openapi::Object)]
#[oai(rename = "Tenant")]
pub struct TenantRow {
    /// Internal id.
    pub id: Uuid,
    /// Public id.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Service desk base URL.
    pub servicedesk_url: String,
    /// Preferences.
    pub enhancement_preferences: Value,
    /// Whether the tenant is active.
    pub is_active: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A new tenant, secrets already encrypted.
pub struct NewTenant<'a> {
    /// Display name.
    pub name: &'a str,
    /// Service desk base URL.
    pub servicedesk_url: &'a str,
    /// Ciphertext of the service desk API key.
    pub servicedesk_api_key_encrypted: &'a str,
    /// Ciphertext of the webhook signing secret.
    pub webhook_signing_secret_encrypted: &'a str,
    /// Preferences (a JSON object).
    pub enhancement_preferences: &'a Value,
}

/// Fields to change; `None` keeps the stored value.
#[derive(Default)]
pub struct TenantChanges<'a> {
    /// New display name.
    pub name: Option<&'a str>,
    /// New service desk URL.
    pub servicedesk_url: Option<&'a str>,
    /// New API key ciphertext.
    pub servicedesk_api_key_encrypted: Option<&'a str>,
    /// New webhook secret ciphertext.
    pub webhook_signing_secret_encrypted: Option<&'a str>,
    /// New preferences.
    pub enhancement_preferences: Option<&'a Value>,
}

/// The unique constraint whose violation means "tenant exists" (409).
pub const UNIQUE_TENANT_ID: &str = "tenant_configs_tenant_id_key";

/// Inserts the transaction's tenant.
pub async fn insert(tx: &mut TenantTx, new: &NewTenant<'_>) -> Result<TenantRow, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    sqlx::query_as!(
        TenantRow,
        r#"INSERT INTO tenant_configs
               (id, tenant_id, name, servicedesk_url, servicedesk_api_key_encrypted,
                webhook_signing_secret_encrypted, enhancement_preferences)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, tenant_id, name, servicedesk_url, enhancement_preferences, is_active,
                     created_at, updated_at"#,
        Uuid::now_v7(),
        tenant_id,
        new.name,
        new.servicedesk_url,
        new.servicedesk_api_key_encrypted,
        new.webhook_signing_secret_encrypted,
        new.enhancement_preferences,
    )
    .fetch_one(tx.conn())
    .await
}

/// The transaction's tenant, if it exists.
pub async fn get(tx: &mut TenantTx) -> Result<Option<TenantRow>, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    sqlx::query_as!(
        TenantRow,
        r#"SELECT id, tenant_id, name, servicedesk_url, enhancement_preferences, is_active,
                  created_at, updated_at
           FROM tenant_configs WHERE tenant_id = $1"#,
        tenant_id,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Applies `changes` to the transaction's tenant; `None` if it does not exist.
pub async fn update(
    tx: &mut TenantTx,
    changes: &TenantChanges<'_>,
) -> Result<Option<TenantRow>, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    sqlx::query_as!(
        TenantRow,
        r#"UPDATE tenant_configs SET
               name = COALESCE($2, name),
               servicedesk_url = COALESCE($3, servicedesk_url),
               servicedesk_api_key_encrypted = COALESCE($4, servicedesk_api_key_encrypted),
               webhook_signing_secret_encrypted = COALESCE($5, webhook_signing_secret_encrypted),
               enhancement_preferences = COALESCE($6, enhancement_preferences)
           WHERE tenant_id = $1
           RETURNING id, tenant_id, name, servicedesk_url, enhancement_preferences, is_active,
                     created_at, updated_at"#,
        tenant_id,
        changes.name,
        changes.servicedesk_url,
        changes.servicedesk_api_key_encrypted,
        changes.webhook_signing_secret_encrypted,
        changes.enhancement_preferences,
    )
    .fetch_optional(tx.conn())
    .await
}

/// Deletes the transaction's tenant (and, by cascade, its history); whether it existed.
pub async fn delete(tx: &mut TenantTx) -> Result<bool, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    let result = sqlx::query!("DELETE FROM tenant_configs WHERE tenant_id = $1", tenant_id)
        .execute(tx.conn())
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Whether the transaction's tenant exists.
pub async fn exists(tx: &mut TenantTx) -> Result<bool, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    let found = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM tenant_configs WHERE tenant_id = $1) AS "found!""#,
        tenant_id
    )
    .fetch_one(tx.conn())
    .await?;
    Ok(found)
}

/// One page of all tenants ordered by `tenant_id`, starting after `after`.
pub async fn list(
    tx: &mut CrossTenantTx,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        r#"SELECT id, tenant_id, name, servicedesk_url, enhancement_preferences, is_active,
                  created_at, updated_at
           FROM tenant_configs
           WHERE ($1::text IS NULL OR tenant_id > $1)
           ORDER BY tenant_id
           LIMIT $2"#,
        after,
        limit,
    )
    .fetch_all(tx.conn())
    .await
}

/// The ciphertexts of a tenant's secrets, as stored.
pub struct StoredSecrets {
    /// `servicedesk_api_key_encrypted`.
    pub servicedesk_api_key: String,
    /// `webhook_signing_secret_encrypted`.
    pub webhook_signing_secret: String,
}

impl StoredSecrets {
    /// The ciphertext of `field`.
    pub fn get(&self, field: SecretField) -> &str {
        match field {
            SecretField::ServicedeskApiKey => &self.servicedesk_api_key,
            SecretField::WebhookSigningSecret => &self.webhook_signing_secret,
        }
    }
}

/// Whether [`stored_secrets`] locks the row until the transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    /// Read only.
    None,
    /// `FOR UPDATE`: a concurrent change waits, so a re-encryption cannot overwrite a secret
    /// that a PATCH set meanwhile.
    ForUpdate,
}

/// The stored secrets of the transaction's tenant, if it exists.
pub async fn stored_secrets(
    tx: &mut TenantTx,
    lock: RowLock,
) -> Result<Option<StoredSecrets>, sqlx::Error> {
    let sql = match lock {
        RowLock::None => {
            "SELECT servicedesk_api_key_encrypted, webhook_signing_secret_encrypted
             FROM tenant_configs WHERE tenant_id = $1"
        }
        RowLock::ForUpdate => {
            "SELECT servicedesk_api_key_encrypted, webhook_signing_secret_encrypted
             FROM tenant_configs WHERE tenant_id = $1 FOR UPDATE"
        }
    };
    let tenant_id = tx.tenant().as_str().to_owned();
    let row: Option<(String, String)> = sqlx::query_as(sql)
        .bind(tenant_id)
        .fetch_optional(tx.conn())
        .await?;
    Ok(row.map(
        |(servicedesk_api_key, webhook_signing_secret)| StoredSecrets {
            servicedesk_api_key,
            webhook_signing_secret,
        },
    ))
}
