-- wrk script: covered sub-ranges. Each request asks a random 24-day window
-- (about 17 bars, the size of the hit-path answer) inside 2024, which the
-- caller fetched once beforehand as a whole year: the range-aware store
-- answers every one from the stored bars. Set by the caller's environment:
--   SUBRANGE_PLUGIN (synthetic), SUBRANGE_TICKER (COV)
local plugin = os.getenv("SUBRANGE_PLUGIN") or "synthetic"
local ticker = os.getenv("SUBRANGE_TICKER") or "COV"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  math.randomseed(1000 + tid)
  -- Every window built once (wrk runs request() per request, on the cores
  -- tickerd uses): noon local time, formatted as local time, so no time-zone
  -- offset can move a day.
  local t0 = os.time({ year = 2024, month = 1, day = 1, hour = 12 })
  reqs = {}
  for i = 0, 341 do
    local s = t0 + i * 86400
    reqs[#reqs + 1] = wrk.format("GET", "/v1/data/" .. plugin .. "/" .. ticker
      .. "?start=" .. os.date("%Y-%m-%d", s) .. "&end=" .. os.date("%Y-%m-%d", s + 23 * 86400))
  end
end
request = function()
  return reqs[math.random(#reqs)]
end
