-- Moves retries that are due from the retry set back into the jobs stream.
--
-- KEYS: 1 retry set, 2 jobs stream
-- ARGV: 1 now in ms, 2 most to move
-- Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'job', member)
end
return #due
