-- One GCRA step, atomically on the Redis server (see gcra.rs for the algorithm).
-- KEYS[1]: the key's theoretical arrival time (TAT), in microseconds on Redis' clock.
-- ARGV[1]: the emission interval (period / limit) in microseconds; ARGV[2]: limit + burst.
-- Returns {allowed (0|1), remaining, retry_after_us, reset_us}.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local next = tat + interval
local allow_at = next - window
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
-- The key expires when its bucket is full again: its state would say nothing more.
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000))
return {1, math.floor((window - (next - now)) / interval), 0, next - now}
