//! The OpenAPI document: every documented operation, and the corrections the served document
//! gets where poem-openapi under-describes what the API does.

use poem_openapi::OpenApiService;

use super::{
    AppState, enhancements::EnhancementsApi, health::HealthApi, queue::QueueApi,
    tenants::TenantsApi,
};

/// The documented operations, one type per resource.
pub type Operations = (HealthApi, TenantsApi, EnhancementsApi, QueueApi);

/// The OpenAPI service of every documented operation.
pub fn openapi(state: &AppState) -> OpenApiService<Operations, ()> {
    OpenApiService::new(
        (
            HealthApi {
                state: state.clone(),
            },
            TenantsApi {
                state: state.clone(),
            },
            EnhancementsApi {
                state: state.clone(),
            },
            QueueApi {
                state: state.clone(),
            },
        ),
        "ai-agents",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Tenant configurations and enhancement requests of the AI ticket-enhancement platform. \
         Every /api/v1 operation needs `Authorization: Bearer <AI_AGENTS_ADMIN_TOKEN>`; every \
         error is application/problem+json.",
    )
}

/// Request objects that refuse unknown fields (`deny_unknown_fields`).
const CLOSED_SCHEMAS: &[&str] = &["TenantCreate", "TenantUpdate", "EnhancementCreate"];

/// The OpenAPI document as served: poem-openapi's, corrected where it under-describes what
/// the API does. Optional properties are `null` when absent (`nullable`), and request objects
/// that refuse unknown fields say so (`additionalProperties: false`), so generated clients and
/// schema-driven tests see the real contract.
pub fn openapi_document(raw: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(raw) else {
        return raw.to_owned();
    };
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            let required: Vec<String> = schema
                .get("required")
                .and_then(serde_json::Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(properties) = schema
                .get_mut("properties")
                .and_then(serde_json::Value::as_object_mut)
            {
                for (property, definition) in properties.iter_mut() {
                    if !required.contains(property)
                        && let Some(definition) = definition.as_object_mut()
                    {
                        definition.insert("nullable".into(), serde_json::Value::Bool(true));
                    }
                }
            }
            if CLOSED_SCHEMAS.contains(&name.as_str())
                && let Some(schema) = schema.as_object_mut()
            {
                schema.insert(
                    "additionalProperties".into(),
                    serde_json::Value::Bool(false),
                );
            }
        }
    }
    serde_json::to_string(&doc).unwrap_or_else(|_| raw.to_owned())
}
