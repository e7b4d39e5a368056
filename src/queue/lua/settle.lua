-- Settles deliveries of the jobs stream, each only while it is still this consumer's.
--
-- A delivery that was taken back (its worker presumed dead, the entry requeued) is no longer in
-- this consumer's pending list: it is left alone and reported as 0, so a worker that lost its
-- claim can never acknowledge, retry or dead-letter a job that another worker now runs.
--
-- KEYS: 1 jobs stream, 2 retry set, 3 dead-letter stream, 4 outcome counters (hash)
-- ARGV: 1 group, 2 consumer, 3 dead-letter cap (approximate MAXLEN), 4 now (RFC 3339),
--       then per delivery 6 values: entry id, outcome (completed | retried | dead | dropped |
--       duplicate), due time in ms (retried), job payload (retried: the next attempt; dead: the
--       job as delivered), error (dead), attempts (dead)
-- Returns one 1 (settled) or 0 (not this consumer's any more) per delivery, in order.
local settled = {}
for i = 5, #ARGV, 6 do
  local id, outcome = ARGV[i], ARGV[i + 1]
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #mine == 0 then
    settled[#settled + 1] = 0
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    if outcome == 'retried' then
      redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 3])
    elseif outcome == 'dead' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
        'job', ARGV[i + 3], 'error', ARGV[i + 4], 'attempts', ARGV[i + 5],
        'failed_at', ARGV[4])
    end
    redis.call('HINCRBY', KEYS[4], outcome, 1)
    settled[#settled + 1] = 1
  end
end
return settled
