-- Moves one dead letter back into the jobs stream (`ai-agents-worker dead retry`).
--
-- KEYS: 1 dead-letter stream, 2 jobs stream
-- ARGV: 1 dead-letter id, 2 the job to queue (its attempts reset)
-- Returns 1 when moved, 0 when the dead letter was gone already.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
  return 1
end
return 0
