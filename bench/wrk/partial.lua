-- wrk script: partial answers, one missing day each. Every wrk thread cycles
-- over its own PARTIAL_TICKERS tickers (default 256); each request on a
-- ticker asks a 24-day window one day later than the previous request on
-- that ticker, so the window's first 23 days are stored and its last is
-- not. The first request on each ticker is a whole miss (1/400 of a 10 s run
-- at 25k req/s). A ticker comes back only after PARTIAL_TICKERS requests of
-- its thread, so its previous request (at most 32 are in flight per thread)
-- has been answered. Environment: PARTIAL_PLUGIN (synthetic), PARTIAL_PREFIX (P).
local plugin = os.getenv("PARTIAL_PLUGIN") or "synthetic"
local prefix = os.getenv("PARTIAL_PREFIX") or "P"
local tickers = tonumber(os.getenv("PARTIAL_TICKERS") or "256")
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  counter = 0
  t0 = os.time({ year = 2010, month = 1, day = 1, hour = 12 })
end
request = function()
  local k = counter % tickers
  local step = math.floor(counter / tickers)
  counter = counter + 1
  local s = t0 + step * 86400
  return wrk.format("GET", "/v1/data/" .. plugin .. "/" .. prefix .. tid .. "x" .. k
    .. "?start=" .. os.date("%Y-%m-%d", s) .. "&end=" .. os.date("%Y-%m-%d", s + 23 * 86400))
end
