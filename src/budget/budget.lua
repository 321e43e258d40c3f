#!lua name=tickerd_budget
-- Upstream budgets shared by every daemon on this Redis (README "Rate limits").
-- Loaded with FUNCTION LOAD REPLACE by tickerd (src/budget/fleet.rs); the
-- arithmetic is the same as src/budget/window.rs, on the server's clock.
--
-- Keys of one plugin (one cluster slot, by the {plugin} hash tag):
--   KEYS[1]  the cool-down deadline: a string, ms since the epoch (server clock)
--   KEYS[2]  the start times handed out: a sorted set, score = start (ms),
--            trimmed to the longest window

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Milliseconds of cool-down left; a value of the wrong type or not a number
-- is removed (it cannot be ours) and reads as none.
local function cooldown_left(key, now)
  local ty = redis.call('TYPE', key)['ok']
  if ty == 'none' then return 0 end
  local v = nil
  if ty == 'string' then v = tonumber(redis.call('GET', key)) end
  if not v then
    redis.call('DEL', key)
    return 0
  end
  if v > now then return v - now end
  return 0
end

-- ARGV: member, max_wait_ms, longest_window_ms, then (max, window_ms) per rate.
-- Returns {0, wait_ms} (go after wait_ms; the start is recorded),
--         {1, wait_ms} (no turn within max_wait; nothing recorded),
--         {2, left_ms} (cooling down).
local function admit(keys, args)
  local now = now_ms()
  local left = cooldown_left(keys[1], now)
  if left > 0 then return {2, left} end
  if #args < 5 then return {0, 0} end
  local set = keys[2]
  local ty = redis.call('TYPE', set)['ok']
  if ty ~= 'zset' and ty ~= 'none' then redis.call('DEL', set) end
  local max_wait = tonumber(args[2])
  local longest = tonumber(args[3])
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now - longest)
  local n = redis.call('ZCARD', set)
  local at = now
  if n > 0 then
    local last = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
    at = math.max(at, tonumber(last[2]))
  end
  for i = 4, #args - 1, 2 do
    local max, win = tonumber(args[i]), tonumber(args[i + 1])
    if n >= max then
      local e = redis.call('ZRANGE', set, n - max, n - max, 'WITHSCORES')
      at = math.max(at, tonumber(e[2]) + win)
    end
  end
  if at - now > max_wait then return {1, at - now} end
  redis.call('ZADD', set, at, args[1])
  redis.call('PEXPIRE', set, at - now + longest + 1000)
  return {0, at - now}
end

-- ARGV: cool-down ms. A longer cool-down already running is kept.
-- Returns {1, ms} when this call started (or lengthened) it, {0, left_ms} otherwise.
local function cool_down(keys, args)
  local now = now_ms()
  local ms = tonumber(args[1])
  local left = cooldown_left(keys[1], now)
  if left >= ms then return {0, left} end
  redis.call('SET', keys[1], now + ms, 'PX', ms)
  return {1, ms}
end

local function left(keys, args)
  return cooldown_left(keys[1], now_ms())
end

redis.register_function('tickerd_admit', admit)
redis.register_function('tickerd_cool_down', cool_down)
redis.register_function('tickerd_cooldown_left', left)
