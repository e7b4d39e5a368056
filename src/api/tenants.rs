//! `/api/v1/tenants`: tenant configurations.
//!
//! Secrets arrive in plaintext, are encrypted before they reach the database and are never
//! returned: [`Tenant`] (the repository's row, which never holds them) has no field for them.

use std::collections::BTreeMap;

use poem_openapi::{ApiResponse, Object, OpenApi, Tags, param::Path, param::Query, payload::Json};
use secrecy::SecretString;
use serde_json::Value;

use super::{
    AppState,
    auth::AdminAuth,
    paging,
    problem::ApiError,
    text::{HttpUrl, Text},
};
use crate::{
    crypto::{Binding, SecretField},
    db::{
        ResultExt,
        scope::CrossTenantTx,
        tenants::{self, NewTenant, TenantChanges, TenantRow as Tenant, UNIQUE_TENANT_ID},
    },
    domain::{ServiceDeskUrl, TenantId, TenantName, storable_json},
};

#[derive(Tags)]
enum TenantTags {
    /// Tenant configurations.
    Tenants,
}

/// A new tenant.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct TenantCreate {
    /// Public id: lowercase letters, digits, `_` and `-`, starting with a letter or digit.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: TenantName,
    /// Base URL of the tenant's service desk (http or https).
    pub servicedesk_url: HttpUrl,
    /// Service desk API key; stored encrypted, never returned.
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub servicedesk_api_key: Text,
    /// Secret that signs the service desk's webhooks; stored encrypted, never returned.
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub webhook_signing_secret: Text,
    /// Free-form preferences for the enhancement logic.
    #[oai(default)]
    pub enhancement_preferences: BTreeMap<String, Value>,
}

/// Changes to a tenant; omitted fields keep their value. `tenant_id` cannot change.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct TenantUpdate {
    /// New display name.
    pub name: Option<TenantName>,
    /// New service desk URL.
    pub servicedesk_url: Option<HttpUrl>,
    /// A rotated API key.
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub servicedesk_api_key: Option<Text>,
    /// A rotated webhook signing secret.
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub webhook_signing_secret: Option<Text>,
    /// New preferences (replace the old ones).
    pub enhancement_preferences: Option<BTreeMap<String, Value>>,
}

/// One page of tenants.
#[derive(Object)]
pub struct TenantPage {
    /// Tenants ordered by `tenant_id`.
    pub items: Vec<Tenant>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
enum Created {
    /// The tenant was created.
    #[oai(status = 201)]
    Created(Json<Tenant>),
}

#[derive(ApiResponse)]
enum Deleted {
    /// The tenant and its history were deleted.
    #[oai(status = 204)]
    Deleted,
}

/// Tenant endpoints.
pub struct TenantsApi {
    /// Shared state.
    pub state: AppState,
}

/// Parses a tenant id from a path: one that cannot exist is simply not found.
fn path_tenant(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|_| ApiError::tenant_not_found(raw))
}

impl TenantsApi {
    /// Seals `value` for `tenant`'s `field`: the ciphertext opens in that row and column only.
    fn encrypt(
        &self,
        tenant: &TenantId,
        field: SecretField,
        value: impl Into<String>,
    ) -> Result<String, ApiError> {
        self.state
            .keyring
            .encrypt(&SecretString::from(value.into()), Binding { tenant, field })
            .map_err(|_| ApiError::internal())
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "TenantTags::Tenants")]
impl TenantsApi {
    /// Create a tenant.
    #[oai(path = "/tenants", method = "post", operation_id = "create_tenant")]
    async fn create(
        &self,
        _auth: AdminAuth,
        body: Json<TenantCreate>,
    ) -> Result<Created, ApiError> {
        let body = body.0;
        let tenant = body.tenant_id;
        let url = ServiceDeskUrl::parse(body.servicedesk_url.as_str(), self.state.host_policy())?;
        let api_key = self.encrypt(
            &tenant,
            SecretField::ServicedeskApiKey,
            body.servicedesk_api_key,
        )?;
        let webhook = self.encrypt(
            &tenant,
            SecretField::WebhookSigningSecret,
            body.webhook_signing_secret,
        )?;
        let preferences = Value::Object(body.enhancement_preferences.into_iter().collect());
        storable_json("enhancement_preferences", &preferences)?;
        let mut tx = self.state.tenant_tx(&tenant).await?;
        let new = NewTenant {
            name: body.name.as_str(),
            servicedesk_url: url.as_str(),
            servicedesk_api_key_encrypted: &api_key,
            webhook_signing_secret_encrypted: &webhook,
            enhancement_preferences: &preferences,
        };
        let row = tenants::insert(&mut tx, &new)
            .await
            .on_constraint(UNIQUE_TENANT_ID, || {
                ApiError::conflict(format!("tenant `{tenant}` already exists"))
            })?;
        tx.commit().await?;
        tracing::info!(tenant_id = %tenant, "tenant created");
        Ok(Created::Created(Json(row)))
    }

    /// List tenants, ordered by `tenant_id`, with keyset paging.
    #[oai(path = "/tenants", method = "get", operation_id = "list_tenants")]
    async fn list(
        &self,
        _auth: AdminAuth,
        /// Page size, 1–100.
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<TenantPage>, ApiError> {
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let after = paging::non_empty(cursor.0.as_deref())
            .map(paging::parse_tenant_cursor)
            .transpose()?;
        let mut tx = CrossTenantTx::begin(&self.state.pool).await?;
        let mut rows = tenants::list(&mut tx, after.as_deref(), limit + 1).await?;
        tx.finish().await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = if more {
            rows.last().map(|r| paging::tenant_cursor(&r.tenant_id))
        } else {
            None
        };
        Ok(Json(TenantPage {
            items: rows,
            next_cursor,
        }))
    }

    /// Get one tenant.
    #[oai(
        path = "/tenants/:tenant_id",
        method = "get",
        operation_id = "get_tenant"
    )]
    async fn get(
        &self,
        _auth: AdminAuth,
        tenant_id: Path<String>,
    ) -> Result<Json<Tenant>, ApiError> {
        let tenant = path_tenant(&tenant_id.0)?;
        let mut tx = self.state.tenant_tx(&tenant).await?;
        let row = tenants::get(&mut tx)
            .await?
            .ok_or_else(|| ApiError::tenant_not_found(&tenant_id.0))?;
        tx.commit().await?;
        Ok(Json(row))
    }

    /// Change a tenant; secrets can be rotated.
    #[oai(
        path = "/tenants/:tenant_id",
        method = "patch",
        operation_id = "update_tenant"
    )]
    async fn update(
        &self,
        _auth: AdminAuth,
        tenant_id: Path<String>,
        body: Json<TenantUpdate>,
    ) -> Result<Json<Tenant>, ApiError> {
        let tenant = path_tenant(&tenant_id.0)?;
        let body = body.0;
        let url = body
            .servicedesk_url
            .map(|raw| ServiceDeskUrl::parse(raw.as_str(), self.state.host_policy()))
            .transpose()?;
        let api_key = body
            .servicedesk_api_key
            .map(|v| self.encrypt(&tenant, SecretField::ServicedeskApiKey, v))
            .transpose()?;
        let webhook = body
            .webhook_signing_secret
            .map(|v| self.encrypt(&tenant, SecretField::WebhookSigningSecret, v))
            .transpose()?;
        let preferences = body
            .enhancement_preferences
            .map(|p| Value::Object(p.into_iter().collect()));
        if let Some(preferences) = &preferences {
            storable_json("enhancement_preferences", preferences)?;
        }
        let changes = TenantChanges {
            name: body.name.as_ref().map(TenantName::as_str),
            servicedesk_url: url.as_ref().map(ServiceDeskUrl::as_str),
            servicedesk_api_key_encrypted: api_key.as_deref(),
            webhook_signing_secret_encrypted: webhook.as_deref(),
            enhancement_preferences: preferences.as_ref(),
        };
        let mut tx = self.state.tenant_tx(&tenant).await?;
        let row = tenants::update(&mut tx, &changes)
            .await?
            .ok_or_else(|| ApiError::tenant_not_found(&tenant_id.0))?;
        tx.commit().await?;
        tracing::info!(tenant_id = %tenant, "tenant updated");
        Ok(Json(row))
    }

    /// Delete a tenant and its enhancement history.
    #[oai(
        path = "/tenants/:tenant_id",
        method = "delete",
        operation_id = "delete_tenant"
    )]
    async fn delete(&self, _auth: AdminAuth, tenant_id: Path<String>) -> Result<Deleted, ApiError> {
        let tenant = path_tenant(&tenant_id.0)?;
        let mut tx = self.state.tenant_tx(&tenant).await?;
        if !tenants::delete(&mut tx).await? {
            return Err(ApiError::tenant_not_found(&tenant_id.0));
        }
        tx.commit().await?;
        tracing::info!(tenant_id = %tenant, "tenant deleted");
        Ok(Deleted::Deleted)
    }
}
