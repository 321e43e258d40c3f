-- synthetic: deterministic daily bars for any ticker and range, no network.
--
-- Useful for trying tickerd on a machine with nothing installed, for tests
-- and for benchmarks. The same ticker and date always give the same bar,
-- whatever range it was asked in; weekends have no bars.

local function hash(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

-- A well-mixed number in [0, 1) from two integers.
local function noise(seed, n)
  local x = (seed * 6364136223846793005 + n * 1442695040888963407) & 0x7fffffffffffffff
  x = x ~ (x >> 33)
  x = (x * 0xff51afd7ed558ccd) & 0x7fffffffffffffff
  x = x ~ (x >> 29)
  return (x % 1000003) / 1000003
end

local function r(x) return math.floor(x * 100 + 0.5) / 100 end

return {
  description = "Deterministic offline daily bars (business days only), for trying tickerd and for tests",
  ttl = "24h",
  timeout = "5s",
  cache_version = 1,

  fetch = function(req)
    local seed = hash(req.ticker)
    local base = 20 + (seed % 480)            -- each ticker has its own price level
    local first = date.parse(req.start_date)
    local last = date.parse(req.end_date)
    local bars = {}
    for t = first, last, 86400 do
      local day = t // 86400
      local wday = (day + 4) % 7             -- 1970-01-01 was a Thursday; 0 = Sunday, 6 = Saturday
      if wday ~= 0 and wday ~= 6 then
        local trend = base * (1 + 0.25 * math.sin(day / 90 + seed % 7))
        local open = trend * (0.98 + 0.04 * noise(seed, day * 4))
        local close = trend * (0.98 + 0.04 * noise(seed, day * 4 + 1))
        local high = math.max(open, close) * (1 + 0.02 * noise(seed, day * 4 + 2))
        local low = math.min(open, close) * (1 - 0.02 * noise(seed, day * 4 + 3))
        bars[#bars + 1] = {
          date = date.format(t),
          open = r(open), high = r(high), low = r(low), close = r(close),
          volume = 100000 + math.floor(noise(seed, day * 7 + 5) * 9900000),
        }
      end
    end
    return { bars = bars, meta = { source = "synthetic", currency = "USD" } }
  end,
}
