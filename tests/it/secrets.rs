//! `ai-agents-api secrets verify|rotate` as an operator runs them: the real binary, as the
//! application role, against a real database; and what a ciphertext moved to another row does.

use aes_gcm::{
    Aes256Gcm, Key, KeyInit, Nonce,
    aead::{Aead, Generate},
};
use ai_agents::{
    crypto::{Binding, Keyring, SecretField},
    db::{
        scope::TenantTx,
        tenants::{self, NewTenant, RowLock, TenantChanges},
    },
    domain::TenantId,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::helpers::{API, Run, TEST_KEY, TestApp, TestDb, run, test_vars};

/// The key a rotation moves to (TEST_KEY is the one the test apps start with).
const NEW_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// The last report line of a run: the summary.
fn summary(run: &Run) -> &str {
    report(run).last().copied().unwrap_or_default()
}

/// Runs `ai-agents-api secrets MODE` as the application role with `current` and `old` keys.
async fn secrets(db: &TestDb, mode: &str, current: &str, old: &[&str]) -> Run {
    let mut vars = test_vars(&db.app_url, "redis://127.0.0.1:1", "unused");
    // Neither Redis nor the admin token is needed.
    vars.remove("AI_AGENTS_REDIS_URL");
    vars.remove("AI_AGENTS_ADMIN_TOKEN");
    vars.insert("AI_AGENTS_ENCRYPTION_KEY".into(), current.into());
    vars.insert("AI_AGENTS_ENCRYPTION_OLD_KEYS".into(), old.join(","));
    // Everything the binary can log, so that the output checks below see it all.
    vars.insert("AI_AGENTS_LOG_LEVEL".into(), "debug".into());
    vars.insert("AI_AGENTS_LOG_FORMAT".into(), "json".into());
    run(API, &["secrets", mode], &vars).await
}

/// The report lines of a run (stdout without the JSON log lines).
fn report(run: &Run) -> Vec<&str> {
    run.stdout
        .lines()
        .filter(|line| !line.starts_with('{'))
        .collect()
}

fn keyring(current: &str, old: &[&str]) -> Keyring {
    let old: Vec<SecretString> = old.iter().map(|k| SecretString::from(*k)).collect();
    Keyring::new(&SecretString::from(current), &old).unwrap()
}

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

/// The stored ciphertexts of `id`, read as the application role.
async fn stored(pool: &PgPool, id: &str) -> [String; 2] {
    let mut tx = TenantTx::begin(pool, &tenant(id)).await.unwrap();
    let secrets = tenants::stored_secrets(&mut tx, RowLock::None)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    SecretField::ALL.map(|field| secrets.get(field).to_owned())
}

/// Sets `field` of `id` to `ciphertext`, as the application role.
async fn overwrite(pool: &PgPool, id: &str, field: SecretField, ciphertext: &str) {
    let mut tx = TenantTx::begin(pool, &tenant(id)).await.unwrap();
    let changes = match field {
        SecretField::ServicedeskApiKey => TenantChanges {
            servicedesk_api_key_encrypted: Some(ciphertext),
            ..TenantChanges::default()
        },
        SecretField::WebhookSigningSecret => TenantChanges {
            webhook_signing_secret_encrypted: Some(ciphertext),
            ..TenantChanges::default()
        },
    };
    tenants::update(&mut tx, &changes).await.unwrap().unwrap();
    tx.commit().await.unwrap();
}

/// The plaintext of `field` of `id` under `keys`.
async fn plaintext(pool: &PgPool, keys: &Keyring, id: &str, field: SecretField) -> String {
    let index = SecretField::ALL.iter().position(|f| *f == field).unwrap();
    let stored = stored(pool, id).await;
    let tenant = tenant(id);
    keys.decrypt(
        &stored[index],
        Binding {
            tenant: &tenant,
            field,
        },
    )
    .unwrap()
    .secret
    .expose_secret()
    .to_owned()
}

/// Asserts that no run printed a key, a plaintext secret or a stored ciphertext.
async fn assert_nothing_secret_in(runs: &[&Run], pool: &PgPool, tenants: &[&str]) {
    let mut forbidden: Vec<String> = vec![TEST_KEY.into(), NEW_KEY.into(), "PLAINTEXT".into()];
    for id in tenants {
        for ciphertext in stored(pool, id).await {
            // The id part (`v2:<key id>:`) is public; the sealed part is not.
            let sealed = ciphertext.rsplit(':').next().unwrap().to_owned();
            forbidden.push(sealed);
        }
    }
    for run in runs {
        for text in [&run.stdout, &run.stderr] {
            for secret in &forbidden {
                assert!(!text.contains(secret.as_str()), "{secret} printed: {text}");
            }
        }
    }
}

/// Creates the tenant `id` with secrets that start with `PLAINTEXT`, the marker
/// [`assert_nothing_secret_in`] looks for.
async fn create_tenant(app: &TestApp, id: &str) {
    let response = app
        .req(Method::POST, "/api/v1/tenants")
        .json(&serde_json::json!({
            "tenant_id": id,
            "name": id,
            "servicedesk_url": "https://desk.example.com",
            "servicedesk_api_key": format!("PLAINTEXT-api-key-of-{id}"),
            "webhook_signing_secret": format!("PLAINTEXT-webhook-of-{id}"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_is_detected() {
    let app = TestApp::spawn().await;
    create_tenant(&app, "acme").await;
    create_tenant(&app, "globex").await;
    let pool = app.db.app_pool().await;
    let clean = secrets(&app.db, "verify", TEST_KEY, &[]).await;
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);

    // Someone who can write the table copies acme's API key into globex's row.
    let [acme_key, _] = stored(&pool, "acme").await;
    overwrite(&pool, "globex", SecretField::ServicedeskApiKey, &acme_key).await;
    let keys = keyring(TEST_KEY, &[]);
    let globex = tenant("globex");
    let error = keys
        .decrypt(
            &acme_key,
            Binding {
                tenant: &globex,
                field: SecretField::ServicedeskApiKey,
            },
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("another row or field"),
        "{error}"
    );

    let swapped = secrets(&app.db, "verify", TEST_KEY, &[]).await;
    assert_ne!(swapped.code, 0);
    assert_eq!(
        report(&swapped),
        [
            "failed: tenant `globex`, field servicedesk_api_key: does not authenticate: it was \
             sealed for another row or field, or altered",
            &format!(
                "secrets verify: 4 checked, 1 failed, 0 not yet under the current key {}",
                keys.current_key_id()
            ),
        ]
    );
    assert!(
        swapped
            .stderr
            .contains("1 stored secret(s) could not be decrypted"),
        "{}",
        swapped.stderr
    );
    // Rotation cannot repair it either, and says so.
    let rotate = secrets(&app.db, "rotate", NEW_KEY, &[TEST_KEY]).await;
    assert_ne!(rotate.code, 0);
    assert!(report(&rotate)[0].starts_with("failed: tenant `globex`, field servicedesk_api_key"));
    assert_nothing_secret_in(&[&clean, &swapped, &rotate], &pool, &["acme", "globex"]).await;
}

#[tokio::test]
async fn rotation_moves_every_secret_to_the_new_key_once() {
    let app = TestApp::spawn().await;
    for id in ["acme", "globex"] {
        create_tenant(&app, id).await;
    }
    let pool = app.db.app_pool().await;
    let new_id = keyring(NEW_KEY, &[]).current_key_id();

    let before = secrets(&app.db, "verify", TEST_KEY, &[]).await;
    assert_eq!(before.code, 0, "{}", before.stderr);
    // The new key is current, the old one still opens: what is not rotated yet is reported.
    let pending = secrets(&app.db, "verify", NEW_KEY, &[TEST_KEY]).await;
    assert_eq!(pending.code, 0, "{}", pending.stderr);
    assert!(
        summary(&pending).contains("4 checked, 0 failed, 4 not yet under the current key"),
        "{}",
        pending.stdout
    );

    let rotate = secrets(&app.db, "rotate", NEW_KEY, &[TEST_KEY]).await;
    assert_eq!(rotate.code, 0, "{}", rotate.stderr);
    assert_eq!(
        summary(&rotate),
        format!(
            "secrets rotate: 4 checked, 4 re-encrypted under the current key {new_id}, 0 failed"
        )
    );
    for id in ["acme", "globex"] {
        for ciphertext in stored(&pool, id).await {
            assert!(
                ciphertext.starts_with(&format!("v2:{new_id}:")),
                "{ciphertext}"
            );
        }
    }
    let again = secrets(&app.db, "rotate", NEW_KEY, &[TEST_KEY]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        summary(&again).contains("4 checked, 0 re-encrypted"),
        "{}",
        again.stdout
    );

    let new_only = secrets(&app.db, "verify", NEW_KEY, &[]).await;
    assert_eq!(new_only.code, 0, "{}{}", new_only.stdout, new_only.stderr);
    assert!(
        summary(&new_only).contains("4 checked, 0 failed, 0 not yet under the current key"),
        "{}",
        new_only.stdout
    );
    let old_only = secrets(&app.db, "verify", TEST_KEY, &[]).await;
    assert_ne!(old_only.code, 0);
    let lines = report(&old_only);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (line, (id, field)) in lines.iter().zip([
        ("acme", "servicedesk_api_key"),
        ("acme", "webhook_signing_secret"),
        ("globex", "servicedesk_api_key"),
        ("globex", "webhook_signing_secret"),
    ]) {
        assert_eq!(
            *line,
            format!(
                "failed: tenant `{id}`, field {field}: sealed by key {new_id}, which is neither \
                 AI_AGENTS_ENCRYPTION_KEY nor in AI_AGENTS_ENCRYPTION_OLD_KEYS"
            )
        );
    }
    assert!(lines[4].contains("4 checked, 4 failed"), "{}", lines[4]);

    // The plaintexts survived, and the API (still on the old key, like a pod not yet
    // restarted) can write meanwhile: a later run re-encrypts just that value.
    let keys = keyring(NEW_KEY, &[TEST_KEY]);
    assert_eq!(
        plaintext(&pool, &keys, "globex", SecretField::WebhookSigningSecret).await,
        "PLAINTEXT-webhook-of-globex"
    );
    let patched = app
        .req(Method::PATCH, "/api/v1/tenants/acme")
        .json(&serde_json::json!({"servicedesk_api_key": "PLAINTEXT-new-api-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let catch_up = secrets(&app.db, "rotate", NEW_KEY, &[TEST_KEY]).await;
    assert!(
        summary(&catch_up).contains("4 checked, 1 re-encrypted"),
        "{}",
        catch_up.stdout
    );
    assert_eq!(
        plaintext(&pool, &keys, "acme", SecretField::ServicedeskApiKey).await,
        "PLAINTEXT-new-api-key"
    );
    assert_nothing_secret_in(
        &[
            &before, &pending, &rotate, &again, &new_only, &old_only, &catch_up,
        ],
        &pool,
        &["acme", "globex"],
    )
    .await;
}

/// A value as the code before key ids wrote it: `v1:` + base64(nonce ‖ ciphertext ‖ tag), no
/// associated data.
fn legacy_v1(key: &str, plaintext: &str) -> String {
    let key: [u8; 32] = STANDARD.decode(key).unwrap().try_into().unwrap();
    let nonce = Nonce::generate();
    let sealed = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key))
        .encrypt(&nonce, plaintext.as_bytes())
        .unwrap();
    format!(
        "v1:{}",
        STANDARD.encode([nonce.as_slice(), &sealed].concat())
    )
}

#[tokio::test]
async fn legacy_v1_values_are_read_and_rotated_in_pages() {
    let db = TestDb::new().await;
    let pool = db.app_pool().await;
    // More tenants than one listing page holds, every secret in the old format.
    let ids: Vec<String> = (0..130).map(|i| format!("legacy-{i:03}")).collect();
    for id in &ids {
        let key = legacy_v1(TEST_KEY, &format!("PLAINTEXT-key-{id}"));
        let webhook = legacy_v1(TEST_KEY, &format!("PLAINTEXT-webhook-{id}"));
        let mut tx = TenantTx::begin(&pool, &tenant(id)).await.unwrap();
        let new = NewTenant {
            name: id,
            servicedesk_url: "https://desk.example.com",
            servicedesk_api_key_encrypted: &key,
            webhook_signing_secret_encrypted: &webhook,
            enhancement_preferences: &serde_json::json!({}),
        };
        tenants::insert(&mut tx, &new).await.unwrap();
        tx.commit().await.unwrap();
    }
    let verify = secrets(&db, "verify", TEST_KEY, &[]).await;
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    assert!(
        summary(&verify).contains("260 checked, 0 failed, 260 not yet under the current key"),
        "{}",
        verify.stdout
    );
    let rotate = secrets(&db, "rotate", NEW_KEY, &[TEST_KEY]).await;
    assert_eq!(rotate.code, 0, "{}", rotate.stderr);
    assert!(
        summary(&rotate).contains("260 checked, 260 re-encrypted"),
        "{}",
        rotate.stdout
    );
    let new_only = secrets(&db, "verify", NEW_KEY, &[]).await;
    assert_eq!(new_only.code, 0, "{}", new_only.stdout);
    assert!(
        summary(&new_only).contains("260 checked, 0 failed, 0 not yet under the current key"),
        "{}",
        new_only.stdout
    );
    let keys = keyring(NEW_KEY, &[]);
    for id in [&ids[0], &ids[129]] {
        assert_eq!(
            plaintext(&pool, &keys, id, SecretField::ServicedeskApiKey).await,
            format!("PLAINTEXT-key-{id}")
        );
        assert_eq!(
            plaintext(&pool, &keys, id, SecretField::WebhookSigningSecret).await,
            format!("PLAINTEXT-webhook-{id}")
        );
    }
    let sample: Vec<&str> = ids.iter().step_by(13).map(String::as_str).collect();
    assert_nothing_secret_in(&[&verify, &rotate, &new_only], &pool, &sample).await;
}

#[tokio::test]
async fn bad_keys_are_refused_at_start_naming_the_variable() {
    let db = TestDb::new().await;
    for (current, old, variable) in [
        ("sekrit-not-a-key", "", "AI_AGENTS_ENCRYPTION_KEY"),
        (
            TEST_KEY,
            "sekrit-not-a-key",
            "AI_AGENTS_ENCRYPTION_OLD_KEYS",
        ),
        (
            TEST_KEY,
            "c2Vrcml0LXRvby1zaG9ydA==",
            "AI_AGENTS_ENCRYPTION_OLD_KEYS",
        ),
        (TEST_KEY, TEST_KEY, "AI_AGENTS_ENCRYPTION_OLD_KEYS"),
        (
            NEW_KEY,
            &format!("{TEST_KEY},{TEST_KEY}"),
            "AI_AGENTS_ENCRYPTION_OLD_KEYS",
        ),
    ] {
        let run = secrets(&db, "verify", current, &[old]).await;
        assert_eq!(run.code, 78, "{current} / {old}: {}", run.stderr);
        assert!(run.stderr.contains(variable), "{}", run.stderr);
        for secret in ["sekrit", "c2Vrcml0", TEST_KEY, NEW_KEY] {
            assert!(!run.stderr.contains(secret), "{}", run.stderr);
            assert!(!run.stdout.contains(secret), "{}", run.stdout);
        }
    }
    let mut vars = test_vars(&db.app_url, "redis://127.0.0.1:1", "unused");
    vars.remove("AI_AGENTS_ENCRYPTION_KEY");
    let rotate = run(API, &["secrets", "rotate"], &vars).await;
    assert_eq!(rotate.code, 78);
    assert!(
        rotate.stderr.contains("AI_AGENTS_ENCRYPTION_KEY"),
        "{}",
        rotate.stderr
    );
    let nonsense = run(API, &["secrets", "nonsense"], &vars).await;
    assert_eq!(nonsense.code, 2);
}
