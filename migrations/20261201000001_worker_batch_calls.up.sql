-- The worker's two writes per batch of jobs, each as one prepared call: the claim of the rows
-- (`pending` or released `processing` → `processing` under the delivery's claim) and the record
-- of their results (`processing` → `completed`, only under the claim). One call is one round
-- trip whose plan the server keeps, where BEGIN, the tenant scope, the statement and COMMIT
-- took four (docs/performance.md, "The worker's database work").
--
-- Both run as the caller (SECURITY INVOKER): row-level security binds them as it binds any
-- statement of the application role. They scope themselves to each tenant of the batch in
-- turn, in a fixed order (concurrent batches lock rows in the same order), and give the caller
-- back its own scope. Every statement is guarded: re-running this file changes nothing.

-- Claims the rows of a batch; returns the ids that moved. A row another transaction is changing
-- is waited for (at most `lock_wait_ms`), then judged again on its new version (READ COMMITTED
-- re-checks the WHERE clause): of two deliveries racing for one row, the second finds the
-- first's claim and does not move it. Its commit does not wait for the disk: a claim lost in a
-- crash is redone by the redelivery.
CREATE OR REPLACE FUNCTION claim_jobs(
    tenant_ids text[], row_ids uuid[], claims text[], takeovers text[], lock_wait_ms integer)
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    caller_scope text := current_setting('app.current_tenant_id', true);
    scope text;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM set_config('lock_timeout', greatest(lock_wait_ms, 1)::text, true);
    FOR scope IN SELECT DISTINCT t FROM unnest(tenant_ids) AS t ORDER BY t LOOP
        PERFORM set_config('app.current_tenant_id', scope, true);
        RETURN QUERY
            UPDATE enhancement_history e SET status = 'processing', claim = i.claim
              FROM unnest(tenant_ids, row_ids, claims, takeovers) AS i(tenant, id, claim, takeover)
             WHERE i.tenant = scope AND e.id = i.id
               AND (e.status = 'pending'
                    OR (e.status = 'processing'
                        AND (e.claim IS NULL OR e.claim = i.claim OR e.claim = i.takeover)))
            RETURNING e.id;
    END LOOP;
    PERFORM set_config('app.current_tenant_id', coalesce(caller_scope, ''), true);
END;
$$;

-- Records the results of a batch; returns the ids recorded. A row whose claim is not the
-- result's (another delivery took it over), or that is gone or final, records nothing.
CREATE OR REPLACE FUNCTION complete_jobs(
    tenant_ids text[], row_ids uuid[], claims text[], times_ms integer[],
    gathered_texts text[], outputs text[])
RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    caller_scope text := current_setting('app.current_tenant_id', true);
    scope text;
BEGIN
    FOR scope IN SELECT DISTINCT t FROM unnest(tenant_ids) AS t ORDER BY t LOOP
        PERFORM set_config('app.current_tenant_id', scope, true);
        RETURN QUERY
            UPDATE enhancement_history e
               SET status = 'completed', processing_time_ms = i.ms,
                   context_gathered = i.gathered::jsonb, llm_output = i.output,
                   completed_at = now()
              FROM unnest(tenant_ids, row_ids, claims, times_ms, gathered_texts, outputs)
                   AS i(tenant, id, claim, ms, gathered, output)
             WHERE i.tenant = scope AND e.id = i.id
               AND e.status = 'processing' AND e.claim = i.claim
            RETURNING e.id;
    END LOOP;
    PERFORM set_config('app.current_tenant_id', coalesce(caller_scope, ''), true);
END;
$$;
