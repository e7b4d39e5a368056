//! Migrations and row-level security against a real PostgreSQL.

use sqlx::{Connection, PgConnection, Row};

use crate::helpers::{TestDb, app_role, owner_url};

/// A description of the schema: tables, columns, indexes, policies, triggers, RLS flags.
async fn schema(conn: &mut PgConnection) -> Vec<String> {
    let query = r"
        SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
               || ' ' || coalesce(column_default, '')
          FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'
        UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'
        UNION ALL SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
          FROM pg_policies WHERE schemaname = 'public'
        UNION ALL SELECT 'trigger ' || event_object_table || ' ' || trigger_name || ' ' || action_timing || ' ' || event_manipulation
          FROM information_schema.triggers WHERE trigger_schema = 'public'
        UNION ALL SELECT 'rls ' || relname || ' ' || relrowsecurity || ' ' || relforcerowsecurity
          FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relname <> '_sqlx_migrations'
        UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> '_sqlx_migrations'
        ORDER BY 1";
    sqlx::query_scalar(query).fetch_all(conn).await.unwrap()
}

#[tokio::test]
async fn migrations_up_down_up_leave_the_same_schema() {
    let db = TestDb::empty().await;
    let pool = db.owner_pool().await;
    let migrator = &ai_agents::db::MIGRATOR;
    migrator.run(&pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let first = schema(&mut conn).await;
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("rls tenant_configs true true")),
        "{first:#?}"
    );
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("rls enhancement_history true true"))
    );
    for index in [
        "ix_enhancement_history_tenant_id",
        "ix_enhancement_history_ticket_id",
        "ix_enhancement_history_status",
    ] {
        assert!(first.iter().any(|l| l.contains(index)), "{index} missing");
    }
    drop(conn);

    // Reverting through the real subcommand code path, newest first, until nothing is left.
    let versions: std::collections::BTreeSet<i64> = migrator.iter().map(|m| m.version).collect();
    let mut reverted = Vec::new();
    while let Some(version) = ai_agents::db::revert_last(&pool).await.unwrap() {
        assert!(!reverted.contains(&version), "reverted {version} twice");
        reverted.push(version);
    }
    reverted.reverse();
    assert_eq!(
        reverted,
        versions.into_iter().collect::<Vec<_>>(),
        "every migration reverted once, newest first"
    );
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        schema(&mut conn).await.is_empty(),
        "down removes everything"
    );
    drop(conn);
    assert_eq!(
        ai_agents::db::revert_last(&pool).await.unwrap(),
        None,
        "nothing left to revert"
    );

    migrator.run(&pool).await.unwrap();
    migrator.run(&pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(schema(&mut conn).await, first);
}

#[tokio::test]
async fn migration_sql_is_safe_to_rerun_by_hand() {
    let db = TestDb::new().await;
    let mut conn = PgConnection::connect(&db.owner_url).await.unwrap();
    let before = schema(&mut conn).await;
    for up in [
        include_str!("../../migrations/20261125000001_initial_schema.up.sql"),
        include_str!("../../migrations/20261130000001_job_claims.up.sql"),
        include_str!("../../migrations/20261201000001_worker_batch_calls.up.sql"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(up))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(schema(&mut conn).await, before);
}

#[tokio::test]
async fn roles_are_not_privileged() {
    let db = TestDb::new().await;
    for url in [&db.owner_url, &db.app_url] {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let row =
            sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(!row.get::<bool, _>(0), "superuser");
        assert!(!row.get::<bool, _>(1), "BYPASSRLS");
    }
}

/// The privileges that the deployment's role set-up gives (`k8s/postgres/init-roles.sh`, run by
/// `nix/dev-services.sh` for the database these tests run against and by CI for its own): a
/// table the owner creates, as sqlx creates `_sqlx_migrations`, is only readable by the
/// application role.
#[tokio::test]
async fn provisioned_database_gives_the_app_role_read_only_new_tables() {
    let mut owner = PgConnection::connect(&owner_url()).await.unwrap();
    let mut tx = owner.begin().await.unwrap();
    let table = format!("acl_probe_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE public.{table} (x int)"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let mut granted = Vec::new();
    for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
        let has: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
            .bind(app_role())
            .bind(format!("public.{table}"))
            .bind(privilege)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        if has {
            granted.push(privilege);
        }
    }
    tx.rollback().await.unwrap();
    assert_eq!(granted, ["SELECT"]);
}

/// Stolen application credentials cannot make migrations re-run or break (contract §7).
#[tokio::test]
async fn app_role_cannot_change_the_migration_history() {
    let db = TestDb::new().await;
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert!(applied > 0, "the history is readable");
    for statement in [
        "UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea",
        "DELETE FROM _sqlx_migrations",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (1, 'forged', true, '\\x00'::bytea, 0)",
        "TRUNCATE _sqlx_migrations",
    ] {
        let error = sqlx::query(statement).execute(&mut app).await.unwrap_err();
        let code = error.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(after, applied);
}

async fn insert_tenant(conn: &mut PgConnection, tenant: &str) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tenant_configs (tenant_id, name, servicedesk_url, servicedesk_api_key_encrypted, \
         webhook_signing_secret_encrypted) VALUES ($1, $1, 'https://x.test', 'v1:x', 'v1:x')",
    )
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO enhancement_history (tenant_id, ticket_id) VALUES ($1, 'T-1')")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn visible(conn: &mut PgConnection, tenant: Option<&str>) -> (Vec<String>, i64) {
    let mut tx = conn.begin().await.unwrap();
    if let Some(tenant) = tenant {
        sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id FROM tenant_configs ORDER BY 1")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM enhancement_history")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (tenants, history)
}

#[tokio::test]
async fn row_level_security_isolates_tenants_for_the_app_role() {
    let db = TestDb::new().await;
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    insert_tenant(&mut app, "tenant-a").await.unwrap();
    insert_tenant(&mut app, "tenant-b").await.unwrap();

    assert_eq!(
        visible(&mut app, Some("tenant-a")).await,
        (vec!["tenant-a".to_owned()], 1)
    );
    assert_eq!(
        visible(&mut app, Some("tenant-b")).await,
        (vec!["tenant-b".to_owned()], 1)
    );
    assert_eq!(
        visible(&mut app, None).await,
        (vec![], 0),
        "no tenant set: nothing visible"
    );
    assert_eq!(
        visible(&mut app, Some("")).await,
        (vec![], 0),
        "empty tenant: nothing visible"
    );

    // Writing another tenant's rows from A's context is refused or affects nothing.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', 'tenant-a', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let insert = sqlx::query(
        "INSERT INTO enhancement_history (tenant_id, ticket_id) VALUES ('tenant-b', 'X')",
    )
    .execute(&mut *tx)
    .await;
    assert!(insert.is_err(), "WITH CHECK refuses rows of another tenant");
    drop(tx);
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', 'tenant-a', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let updated = sqlx::query(
        "UPDATE enhancement_history SET status = 'failed' WHERE tenant_id = 'tenant-b'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM tenant_configs WHERE tenant_id = 'tenant-b'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    tx.commit().await.unwrap();
    assert_eq!(visible(&mut app, Some("tenant-b")).await.1, 1);

    // The setting is transaction-local: it does not leak into the next transaction.
    assert_eq!(visible(&mut app, None).await, (vec![], 0));

    // The owner is bound too (FORCE ROW LEVEL SECURITY).
    let mut owner = PgConnection::connect(&db.owner_url).await.unwrap();
    assert_eq!(visible(&mut owner, None).await, (vec![], 0));
}

#[tokio::test]
async fn tenant_scope_helper_sees_only_its_tenant() {
    use ai_agents::{
        db::{enhancements, scope::TenantTx},
        domain::{TenantId, TicketId},
    };
    let db = TestDb::new().await;
    let pool = db.app_pool().await;
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    insert_tenant(&mut app, "tenant-a").await.unwrap();
    insert_tenant(&mut app, "tenant-b").await.unwrap();

    let a = TenantId::parse("tenant-a").unwrap();
    let mut tx = TenantTx::begin(&pool, &a).await.unwrap();
    let id = uuid::Uuid::now_v7();
    enhancements::insert(
        &mut tx,
        id,
        &TicketId::parse("T-2").unwrap(),
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    let rows = enhancements::list_for_tenant(&mut tx, None, None, 100)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.tenant_id == "tenant-a"));

    let b = TenantId::parse("tenant-b").unwrap();
    let mut tx = TenantTx::begin(&pool, &b).await.unwrap();
    assert!(
        enhancements::get(&mut tx, id).await.unwrap().is_none(),
        "B cannot read A's row by id"
    );
    tx.commit().await.unwrap();
    let claim = enhancements::ClaimRequest {
        tenant: &b,
        id,
        claim: "1-0",
        takeover_from: None,
    };
    assert_eq!(
        enhancements::claim(&pool, &[claim], std::time::Duration::from_secs(5))
            .await
            .unwrap(),
        vec![enhancements::ClaimOutcome::Missing],
        "B cannot claim A's row"
    );
}

/// Fencing: once a second delivery took a row over (the first presumed dead), the first can
/// neither complete nor fail it; the second can, and its result is stored as given.
#[tokio::test]
async fn a_stale_claim_cannot_record_an_outcome() {
    use std::time::Duration;

    use ai_agents::{
        db::{
            enhancements::{self, ClaimOutcome, ClaimRequest, Completion},
            scope::TenantTx,
        },
        domain::TenantId,
    };
    let db = TestDb::new().await;
    let mut owner = PgConnection::connect(&db.owner_url).await.unwrap();
    insert_tenant(&mut owner, "tenant-a").await.unwrap();
    let pool = db.app_pool().await;
    let a = TenantId::parse("tenant-a").unwrap();
    let id = insert_pending(&pool, &a).await;
    let wait = Duration::from_secs(5);
    let claim = |claim, takeover_from| ClaimRequest {
        tenant: &a,
        id,
        claim,
        takeover_from,
    };
    assert_eq!(
        enhancements::claim(&pool, &[claim("1-0", None)], wait)
            .await
            .unwrap(),
        vec![ClaimOutcome::Claimed]
    );
    // A second delivery finds the row held; told the first is dead, it takes it over.
    assert_eq!(
        enhancements::claim(&pool, &[claim("2-0", None)], wait)
            .await
            .unwrap(),
        vec![ClaimOutcome::HeldBy("1-0".to_owned())]
    );
    assert_eq!(
        enhancements::claim(&pool, &[claim("2-0", Some("1-0"))], wait)
            .await
            .unwrap(),
        vec![ClaimOutcome::Claimed]
    );
    let gathered = serde_json::json!({"note": "it's \\ done"});
    let completion = |claim| Completion {
        tenant: &a,
        id,
        claim,
        processing_time_ms: 7,
        context_gathered: &gathered,
        llm_output: Some("l'output"),
    };
    assert_eq!(
        enhancements::complete(&pool, &[completion("1-0")])
            .await
            .unwrap(),
        vec![false],
        "the stale claim completed the row"
    );
    let mut tx = TenantTx::begin(&pool, &a).await.unwrap();
    assert_eq!(
        enhancements::fail(&mut tx, id, "1-0", None, "stale")
            .await
            .unwrap(),
        enhancements::Failing::HeldBy("2-0".to_owned()),
        "the stale claim failed the row"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        enhancements::complete(&pool, &[completion("2-0")])
            .await
            .unwrap(),
        vec![true]
    );
    let mut tx = TenantTx::begin(&pool, &a).await.unwrap();
    let row = enhancements::get(&mut tx, id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (
            row.processing_time_ms,
            row.context_gathered.as_ref(),
            row.llm_output.as_deref()
        ),
        (Some(7), Some(&gathered), Some("l'output")),
        "the result was not stored as given"
    );
    assert_eq!(
        enhancements::claim(&pool, &[claim("3-0", Some("2-0"))], wait)
            .await
            .unwrap(),
        vec![ClaimOutcome::Finished],
        "a finished row is never claimed again"
    );
}

/// The worker's batch calls (`claim_jobs`, `complete_jobs`): each request reaches only its own
/// tenant's rows, a lock wait ends at the given bound and undoes the whole call, and the
/// settings the calls make end with their transaction (the caller's scope comes back).
#[tokio::test]
async fn the_batch_calls_are_scoped_bounded_and_atomic() {
    use std::time::{Duration, Instant};

    use ai_agents::{
        db::enhancements::{self, ClaimOutcome, ClaimRequest, Completion},
        domain::TenantId,
    };
    let db = TestDb::new().await;
    let mut owner = PgConnection::connect(&db.owner_url).await.unwrap();
    insert_tenant(&mut owner, "tenant-a").await.unwrap();
    insert_tenant(&mut owner, "tenant-b").await.unwrap();
    let pool = db.app_pool().await;
    let (a, b) = (
        TenantId::parse("tenant-a").unwrap(),
        TenantId::parse("tenant-b").unwrap(),
    );
    let (id_a, id_b, id_b2) = (
        insert_pending(&pool, &a).await,
        insert_pending(&pool, &b).await,
        insert_pending(&pool, &b).await,
    );
    let state = |tenant: &'static str, id: uuid::Uuid| {
        let url = db.owner_url.clone();
        async move {
            let mut owner = PgConnection::connect(&url).await.unwrap();
            let mut tx = owner.begin().await.unwrap();
            sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT status::text, claim FROM enhancement_history WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .unwrap()
        }
    };
    let request = |tenant, id, claim| ClaimRequest {
        tenant,
        id,
        claim,
        takeover_from: None,
    };
    let wait = Duration::from_secs(5);

    // A's row asked for in B's name does not move; B's own does.
    assert_eq!(
        enhancements::claim(
            &pool,
            &[request(&b, id_a, "1-0"), request(&b, id_b, "1-1")],
            wait
        )
        .await
        .unwrap(),
        vec![ClaimOutcome::Missing, ClaimOutcome::Claimed]
    );
    assert_eq!(state("tenant-a", id_a).await, ("pending".to_owned(), None));
    assert_eq!(
        state("tenant-b", id_b).await,
        ("processing".to_owned(), Some("1-1".to_owned()))
    );
    // Nor can B's name complete it, even under the right claim.
    assert_eq!(
        enhancements::claim(&pool, &[request(&a, id_a, "1-0")], wait)
            .await
            .unwrap(),
        vec![ClaimOutcome::Claimed]
    );
    let gathered = serde_json::json!({});
    let completion = |tenant, id, claim| Completion {
        tenant,
        id,
        claim,
        processing_time_ms: 1,
        context_gathered: &gathered,
        llm_output: None,
    };
    assert_eq!(
        enhancements::complete(
            &pool,
            &[completion(&b, id_a, "1-0"), completion(&b, id_b, "1-1")]
        )
        .await
        .unwrap(),
        vec![false, true]
    );
    assert_eq!(
        state("tenant-a", id_a).await,
        ("processing".to_owned(), Some("1-0".to_owned()))
    );

    // Two tenants in one call, B's row locked elsewhere: the call ends with the lock error at
    // its own bound (not the session's five seconds), and A's claim is undone with it.
    let mut locker = PgConnection::connect(&db.owner_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', 'tenant-b', true)")
        .execute(&mut locker)
        .await
        .unwrap();
    let locked = sqlx::query("SELECT 1 FROM enhancement_history WHERE id = $1 FOR UPDATE")
        .bind(id_b2)
        .execute(&mut locker)
        .await
        .unwrap();
    assert_eq!(locked.rows_affected(), 1, "B's row was not locked");
    let started = Instant::now();
    let failed = enhancements::claim(
        &pool,
        &[
            ClaimRequest {
                tenant: &a,
                id: id_a,
                claim: "2-0",
                takeover_from: Some("1-0"),
            },
            request(&b, id_b2, "2-1"),
        ],
        Duration::from_millis(200),
    )
    .await
    .expect_err("the claim went through a locked row");
    let waited = started.elapsed();
    let code = failed
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("55P03"), "{failed}");
    assert!(
        waited < Duration::from_secs(2),
        "the lock wait took {waited:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!(
        state("tenant-a", id_a).await,
        ("processing".to_owned(), Some("1-0".to_owned())),
        "the failed call left A's new claim behind"
    );

    // The calls' settings last as long as their transaction; inside a caller's transaction,
    // the caller's scope comes back after the call.
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    let defaults = "SELECT current_setting('lock_timeout'), current_setting('synchronous_commit'), \
                    coalesce(current_setting('app.current_tenant_id', true), '')";
    let before: (String, String, String) =
        sqlx::query_as(defaults).fetch_one(&mut app).await.unwrap();
    let claimed: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM claim_jobs(ARRAY['tenant-b'], $1, ARRAY['3-0'], ARRAY[NULL], 100) AS id",
    )
    .bind(vec![id_b2])
    .fetch_all(&mut app)
    .await
    .unwrap();
    assert_eq!(claimed, vec![id_b2]);
    let after: (String, String, String) =
        sqlx::query_as(defaults).fetch_one(&mut app).await.unwrap();
    assert_eq!(after, before, "the call's settings outlived it");
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', 'tenant-a', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let _: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM claim_jobs(ARRAY['tenant-b'], $1, ARRAY['3-0'], ARRAY[NULL], 100) AS id",
    )
    .bind(vec![id_b2])
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let scope: String = sqlx::query_scalar("SELECT current_setting('app.current_tenant_id')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        scope, "tenant-a",
        "the call did not give the caller its scope back"
    );
    tx.rollback().await.unwrap();
}

/// A committed `pending` enhancement row of `tenant`, as the API stores one; its id.
async fn insert_pending(pool: &sqlx::PgPool, tenant: &ai_agents::domain::TenantId) -> uuid::Uuid {
    use ai_agents::{db::enhancements, db::scope::TenantTx, domain::TicketId};
    let id = uuid::Uuid::now_v7();
    let mut tx = TenantTx::begin(pool, tenant).await.unwrap();
    enhancements::insert(
        &mut tx,
        id,
        &TicketId::parse("T-1").unwrap(),
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

/// The application pool's check of returning connections (`db::connect_lazy`): a connection
/// that comes back with the server inside a transaction sqlx does not know of (a `BEGIN` whose
/// caller stopped waiting for its answer) is closed, not handed out, where a bare statement
/// would run in that transaction and never commit; a healthy one is kept.
#[tokio::test]
async fn a_connection_returned_inside_a_transaction_is_not_reused() {
    use ai_agents::config::{DatabaseConfig, SessionLimits};
    let db = TestDb::new().await;
    let pool = ai_agents::db::connect_lazy(&DatabaseConfig {
        url: secrecy::SecretString::from(db.app_url.clone()),
        pool_size: 1,
        min_connections: 0,
        connect_timeout: std::time::Duration::from_secs(5),
        session_limits: SessionLimits {
            statement_timeout: std::time::Duration::from_secs(2),
            lock_timeout: std::time::Duration::from_secs(1),
            idle_in_transaction_timeout: std::time::Duration::from_secs(30),
        },
    })
    .expect("pool");
    let backend = || async {
        let mut conn = pool.acquire().await.expect("a connection");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .expect("pid");
        (conn, pid)
    };

    let (conn, first) = backend().await;
    drop(conn);
    let (mut conn, kept) = backend().await;
    assert_eq!(kept, first, "a healthy connection is kept");

    // The server opens a transaction that sqlx's own count of them does not show.
    sqlx::raw_sql("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("BEGIN");
    drop(conn);
    let (mut conn, next) = backend().await;
    // One simple-protocol message: outside a transaction block, the statement and its own
    // transaction start at one instant.
    let in_transaction: bool =
        sqlx::raw_sql("SELECT transaction_timestamp() <> statement_timestamp()")
            .fetch_one(&mut *conn)
            .await
            .expect("state")
            .get(0);
    println!(
        "connection returned inside a transaction: backend {kept} then {next}; the next one in \
         a transaction: {in_transaction}"
    );
    assert_ne!(
        next, kept,
        "the connection left inside a transaction was reused"
    );
    assert!(!in_transaction);
}
