-- Puts deliveries of dead or silent consumers back at the end of the jobs stream, one attempt
-- further: a delivery whose worker died counts as an attempt, so a job that kills its worker
-- reaches the dead-letter queue after AI_AGENTS_WORKER_MAX_RETRIES + 1 deliveries instead of
-- cycling for ever.
--
-- KEYS: 1 jobs stream, 2 outcome counters (hash)
-- ARGV: 1 group, 2 the consumer the entries must still belong to ('' for any), 3.. entry ids
-- Returns how many entries went back.
local requeued = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local owner = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #owner == 1 and (ARGV[2] == '' or owner[1][2] == ARGV[2]) then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    if entry[1] then
      local fields = entry[1][2]
      for f = 1, #fields, 2 do
        if fields[f] == 'job' then
          local ok, job = pcall(cjson.decode, fields[f + 1])
          if ok and type(job) == 'table' then
            job['attempt'] = (tonumber(job['attempt']) or 0) + 1
            fields[f + 1] = cjson.encode(job)
          end
        end
      end
      redis.call('XADD', KEYS[1], '*', unpack(fields))
      redis.call('HINCRBY', KEYS[2], 'reclaimed', 1)
      requeued = requeued + 1
    end
  end
end
return requeued
