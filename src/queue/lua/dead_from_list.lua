-- Rewrites a dead-letter list (how builds before 2026-11-30 kept dead letters) as a
-- stream, oldest first, so that dead letters have ids and a time. Does nothing to a stream.
--
-- KEYS: 1 dead-letter key
-- Returns how many letters were converted.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'list' then
  return 0
end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
for i = #items, 1, -1 do
  local ok, letter = pcall(cjson.decode, items[i])
  if ok and type(letter) == 'table' then
    redis.call('XADD', KEYS[1], '*', 'job', tostring(letter['job'] or ''),
      'error', tostring(letter['error'] or ''), 'attempts', tostring(letter['attempts'] or 0),
      'failed_at', tostring(letter['failed_at'] or ''))
  else
    redis.call('XADD', KEYS[1], '*', 'job', items[i], 'error', 'unreadable dead letter',
      'attempts', '0', 'failed_at', '')
  end
end
return #items
