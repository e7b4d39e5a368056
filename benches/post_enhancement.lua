-- wrk script of the service benchmark (benches/service/): POST /api/v1/enhancements with the admin token.
--
--   wrk -t1 -c32 -d10s --latency -s benches/post_enhancement.lua URL -- TOKEN TENANT
--
-- The request is built once per thread (no per-request Lua), so wrk costs as little CPU per
-- request as for a plain GET. Every request stores a new `pending` row and queues its job; the
-- ticket id repeats, which the API allows. wrk counts answers other than 2xx/3xx as
-- "Non-2xx or 3xx responses", which the harness reports.

function init(args)
  local token = args[1] or "missing-token"
  local tenant = args[2] or "bench"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.body = '{"tenant_id":"' .. tenant .. '","ticket_id":"BENCH-1","context":{"source":"wrk"}}'
end
