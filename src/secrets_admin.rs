//! `ai-agents-api secrets verify` and `secrets rotate`: every stored tenant secret, checked or
//! re-encrypted under the current key.
//!
//! Both run as the application role, through row-level security like the API: tenant ids are
//! read a page at a time in a read-only cross-tenant transaction (the admin listing's policy),
//! then each tenant's secrets are read, and rewritten, in a transaction scoped to that tenant.
//! So no owner or superuser is needed, at most one row is locked at a time, and an interrupted
//! rotation leaves every row either as it was or fully re-encrypted: running it again carries
//! on, leaving alone what is already under the current key. Reports name tenants, fields and
//! key ids, never a value.

use std::io::Write;

use secrecy::SecretString;
use sqlx::PgPool;

use crate::{
    crypto::{Binding, DecryptError, EncryptError, Keyring, SecretField},
    db::{
        scope::{CrossTenantTx, TenantTx},
        tenants::{self, RowLock, StoredSecrets, TenantChanges},
    },
    domain::TenantId,
};

/// Tenants per listing page: bounds memory and the length of each read-only transaction.
const PAGE: i64 = 100;

/// What to do with each stored secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decrypt only; report what fails.
    Verify,
    /// Re-encrypt what is not yet under the current key.
    Rotate,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Verify => "secrets verify",
            Self::Rotate => "secrets rotate",
        }
    }
}

/// The counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Secrets read.
    pub checked: u64,
    /// Secrets that did not decrypt (one report line each).
    pub failed: u64,
    /// Secrets that decrypted but are not under the current key in the current format (verify
    /// only: a rotation rewrites them).
    pub outdated: u64,
    /// Secrets re-encrypted under the current key (rotation only).
    pub rotated: u64,
}

/// Why a run stopped before it had seen every tenant. What was re-encrypted until then is kept.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The database refused or went away.
    #[error("reading or writing tenant_configs failed (re-encrypted secrets are kept; run again)")]
    Database(#[from] sqlx::Error),
    /// A stored tenant id is not a valid one (the table's check constraint prevents it).
    #[error("tenant_configs holds an invalid tenant id")]
    TenantId,
    /// A value could not be sealed.
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
    /// The report could not be written.
    #[error("cannot write the report")]
    Output(#[from] std::io::Error),
}

/// Checks (or rotates) every stored secret; writes one line per failure and the summary to
/// `out`.
pub async fn run(
    pool: &PgPool,
    keyring: &Keyring,
    mode: Mode,
    out: &mut (dyn Write + Send),
) -> Result<Summary, SecretsError> {
    let mut summary = Summary::default();
    let mut after: Option<String> = None;
    loop {
        let mut listing = CrossTenantTx::begin(pool).await?;
        let page = tenants::list(&mut listing, after.as_deref(), PAGE).await?;
        listing.finish().await?;
        for row in &page {
            let tenant = TenantId::parse(&row.tenant_id).map_err(|_| SecretsError::TenantId)?;
            visit(pool, keyring, mode, &tenant, &mut summary, out).await?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = Some(last.tenant_id.clone()),
            _ => break,
        }
    }
    writeln!(out, "{}", summary_line(mode, &summary, keyring))?;
    Ok(summary)
}

/// One tenant's secrets in one transaction: read (locked when rotating), reported, rewritten.
async fn visit(
    pool: &PgPool,
    keyring: &Keyring,
    mode: Mode,
    tenant: &TenantId,
    summary: &mut Summary,
    out: &mut (dyn Write + Send),
) -> Result<(), SecretsError> {
    let lock = match mode {
        Mode::Verify => RowLock::None,
        Mode::Rotate => RowLock::ForUpdate,
    };
    let mut tx = TenantTx::begin(pool, tenant).await?;
    // Deleted since the listing: nothing to do.
    let Some(stored) = tenants::stored_secrets(&mut tx, lock).await? else {
        return Ok(());
    };
    let mut rewritten: [Option<String>; 2] = [None, None];
    for (slot, field) in rewritten.iter_mut().zip(SecretField::ALL) {
        summary.checked += 1;
        match check(keyring, &stored, tenant, field) {
            Err(error) => {
                summary.failed += 1;
                writeln!(out, "failed: {error}")?;
            }
            Ok(None) => {}
            Ok(Some(_)) if mode == Mode::Verify => summary.outdated += 1,
            Ok(Some(secret)) => {
                *slot = Some(keyring.encrypt(&secret, Binding { tenant, field })?);
                summary.rotated += 1;
            }
        }
    }
    let [servicedesk_api_key, webhook_signing_secret] = rewritten;
    if servicedesk_api_key.is_some() || webhook_signing_secret.is_some() {
        let changes = TenantChanges {
            servicedesk_api_key_encrypted: servicedesk_api_key.as_deref(),
            webhook_signing_secret_encrypted: webhook_signing_secret.as_deref(),
            ..TenantChanges::default()
        };
        tenants::update(&mut tx, &changes).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Decrypts one stored secret: `Some(plaintext)` when it should be re-encrypted.
fn check(
    keyring: &Keyring,
    stored: &StoredSecrets,
    tenant: &TenantId,
    field: SecretField,
) -> Result<Option<SecretString>, DecryptError> {
    let decrypted = keyring.decrypt(stored.get(field), Binding { tenant, field })?;
    Ok((!decrypted.current).then_some(decrypted.secret))
}

fn summary_line(mode: Mode, summary: &Summary, keyring: &Keyring) -> String {
    let key = keyring.current_key_id();
    let Summary {
        checked,
        failed,
        outdated,
        rotated,
    } = *summary;
    match mode {
        Mode::Verify => format!(
            "{}: {checked} checked, {failed} failed, {outdated} not yet under the current key \
             {key}{}",
            mode.name(),
            if outdated > 0 {
                " (run `ai-agents-api secrets rotate`)"
            } else {
                ""
            }
        ),
        Mode::Rotate => format!(
            "{}: {checked} checked, {rotated} re-encrypted under the current key {key}, \
             {failed} failed",
            mode.name()
        ),
    }
}
