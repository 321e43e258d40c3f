-- alphavantage: daily bars from Alpha Vantage's TIME_SERIES_DAILY.
--
--   GET {base}/query?function=TIME_SERIES_DAILY&symbol=..&outputsize=full&apikey=..
--
-- Needs ALPHAVANTAGE_API_KEY (free keys at https://www.alphavantage.co/support/#api-key).
-- Set ALPHAVANTAGE_BASE_URL to point it elsewhere (a test server).
--
-- Alpha Vantage answers problems with HTTP 200 and a JSON note instead of data:
--   {"Note": "...call frequency..."}          rate limit          -> cool-down, 429
--   {"Information": "...rate limit / premium"} rate limit, plan    -> cool-down, 429
--   {"Error Message": "Invalid API call..."}   e.g. unknown symbol -> no_data
-- Raising an error (never returning bars) is what keeps these out of the cache.
-- outputsize=full returns the whole history at once, so the answer declares
-- what it covers (`coverage`): tickerd keeps every bar, and later requests
-- for any range of that history are answered without another call.
-- Prices come as strings keyed "1. open", "2. high", ...; dates are object keys,
-- in no particular order.

return {
  description = "Daily bars from Alpha Vantage (TIME_SERIES_DAILY; needs ALPHAVANTAGE_API_KEY)",
  ttl = "6h",
  timeout = "15s",
  cache_version = 1,
  env = { "ALPHAVANTAGE_BASE_URL", "ALPHAVANTAGE_API_KEY" },
  max_concurrency = 4,     -- the free plan allows a few calls per minute anyway
  -- The free key allows 25 calls a day (and used to allow 5 a minute): spend
  -- them across the whole fleet. A premium key raises this with
  -- [plugins.alphavantage] rate_limit = "75/min" (or whatever the plan says).
  rate_limit = { "5/min", "25/day" },

  fetch = function(req)
    local key = env.get("ALPHAVANTAGE_API_KEY")
    if key == nil or key == "" then
      error("ALPHAVANTAGE_API_KEY is not set: export it in tickerd's environment"
        .. " (get a free key at https://www.alphavantage.co/support/#api-key)", 0)
    end
    local base = env.get("ALPHAVANTAGE_BASE_URL") or "https://www.alphavantage.co"
    local res = http.get(base .. "/query", {
      query = {
        ["function"] = "TIME_SERIES_DAILY",
        symbol = req.ticker,
        outputsize = "full",   -- the whole history: one call serves any range
        apikey = key,          -- error messages never show the query string
      },
      timeout = "12s",
    })
    if res.status ~= 200 then
      errors.upstream("alphavantage answered " .. res.status)
    end

    local ok, doc = pcall(json.decode, res.body)
    if not ok or type(doc) ~= "table" then
      errors.upstream("alphavantage answered 200 with something that is not a JSON object")
    end
    if doc["Note"] or doc["Information"] then
      local note = tostring(doc["Note"] or doc["Information"])
      -- A rate-limit note: every daemon stops calling for a while. The
      -- per-minute note ("call frequency is 5 calls per minute ...") for a
      -- minute; the daily quota's ("... 25 requests per day") for the longest
      -- cool-down tickerd allows (an hour).
      local daily = note:find("per minute", 1, true) == nil and note:find("per day", 1, true) ~= nil
      errors.rate_limited("alphavantage refused the call: " .. note, daily and 3600 or 60)
    end
    if doc["Error Message"] then
      errors.no_data("alphavantage has no data for " .. req.ticker .. ": " .. tostring(doc["Error Message"]))
    end
    local series = doc["Time Series (Daily)"]
    if type(series) ~= "table" then
      errors.upstream("alphavantage answered without a \"Time Series (Daily)\"")
    end

    local bars = {}
    for d, v in pairs(series) do
      bars[#bars + 1] = {
        date = d,
        open = tonumber(v["1. open"]),
        high = tonumber(v["2. high"]),
        low = tonumber(v["3. low"]),
        close = tonumber(v["4. close"]),
        volume = tonumber(v["5. volume"]),
      }
    end
    table.sort(bars, function(a, b) return a.date < b.date end)

    -- The whole history is in this answer: from its first date (or the asked
    -- start, if earlier) to the asked end (or its last date, if later).
    local from, to = req.start_date, req.end_date
    if #bars > 0 then
      if bars[1].date < from then from = bars[1].date end
      if bars[#bars].date > to then to = bars[#bars].date end
    end
    local info = doc["Meta Data"] or {}
    return {
      bars = bars,
      coverage = { from = from, to = to },
      meta = { symbol = info["2. Symbol"], timezone = info["5. Time Zone"] },
    }
  end,
}
