-- yahoo: daily bars from the Yahoo Finance chart API (v8).
--
--   GET {base}/v8/finance/chart/{TICKER}?period1=..&period2=..&interval=1d&events=div,split
--
-- Set YAHOO_BASE_URL to point it elsewhere (a mirror, a proxy, a test server).
-- Tickers are Yahoo's: AAPL, BHP.AX, ^GSPC, EURUSD=X.
--
-- Things worth knowing when you copy this:
-- * Each bar's timestamp is the session's open in UTC. An ASX session that opens
--   at 10:00 in Sydney starts at 23:00 UTC the day before, so bars are dated with
--   the exchange's offset (meta.gmtoffset): date.format(ts, gmtoffset).
-- * Yahoo leaves holes as JSON null (json.null here): such bars are skipped.
-- * The window asked for is one day wider on each side, then cut back to
--   [start_date, end_date] by local date, so no edge bar is lost to time zones.
-- * A 429 is errors.rate_limited: the plugin cools down fleet-wide for the
--   answer's Retry-After instead of every daemon asking again.

local DAY = 86400

local function is_null(v)
  return v == nil or v == json.null
end

-- The most useful line of an error answer, for messages.
local function describe(res)
  local ok, doc = pcall(json.decode, res.body)
  if ok and type(doc) == "table" and type(doc.chart) == "table" and type(doc.chart.error) == "table" then
    local e = doc.chart.error
    return tostring(e.code) .. ": " .. tostring(e.description)
  end
  return (res.body:match("^%s*([^\r\n]*)") or ""):sub(1, 200)
end

return {
  description = "Daily bars from the Yahoo Finance chart API (v8)",
  ttl = "1h",
  timeout = "10s",
  cache_version = 1,
  env = { "YAHOO_BASE_URL" },
  -- Yahoo publishes no limit. Its old public API allowed 2000 calls an hour
  -- per IP, and bursts are what get IPs blocked: at most 5 calls start in
  -- any second and 2000 in any hour, across every daemon on the same Redis.
  -- Override with [plugins.yahoo] rate_limit in the config.
  rate_limit = { "5/s", "2000/h" },

  fetch = function(req)
    local base = env.get("YAHOO_BASE_URL") or "https://query1.finance.yahoo.com"
    local first = date.parse(req.start_date)
    local last = date.parse(req.end_date)

    local res = http.get(base .. "/v8/finance/chart/" .. req.ticker, {
      query = {
        period1 = first - DAY,          -- one day earlier ...
        period2 = last + 2 * DAY,       -- ... and one later (period2 is exclusive)
        interval = "1d",
        events = "div,split",
      },
      timeout = "8s",
    })

    if res.status == 404 then
      errors.no_data("yahoo has no data for " .. req.ticker .. " (" .. describe(res) .. ")")
    elseif res.status == 429 then
      -- Every daemon stops calling Yahoo for Retry-After (60 s without one).
      errors.rate_limited("yahoo is rate limiting us (429: " .. describe(res) .. ")",
        tonumber(res.headers["retry-after"]))
    elseif res.status ~= 200 then
      errors.upstream("yahoo answered " .. res.status .. " (" .. describe(res) .. ")")
    end

    local ok, doc = pcall(json.decode, res.body)
    if not ok or type(doc) ~= "table" then
      errors.upstream("yahoo answered 200 with something that is not a JSON object")
    end
    local chart = doc.chart or {}
    if not is_null(chart.error) then
      local e = chart.error
      if e.code == "Not Found" then
        errors.no_data("yahoo has no data for " .. req.ticker .. " (" .. tostring(e.description) .. ")")
      end
      errors.upstream("yahoo error: " .. tostring(e.code) .. ": " .. tostring(e.description))
    end
    local result = not is_null(chart.result) and chart.result[1] or nil
    if result == nil then
      errors.no_data("yahoo returned no chart for " .. req.ticker)
    end

    local meta = result.meta or {}
    local offset = tonumber(meta.gmtoffset) or 0
    local stamps = is_null(result.timestamp) and {} or result.timestamp
    local indicators = result.indicators or {}
    local quote = (indicators.quote or {})[1] or {}
    local function column(t, name)           -- a missing column reads as all nulls
      local c = t and t[name]
      return is_null(c) and {} or c
    end
    local open, high = column(quote, "open"), column(quote, "high")
    local low, close = column(quote, "low"), column(quote, "close")
    local volume = column(quote, "volume")
    local adj = column((indicators.adjclose or {})[1], "adjclose")

    local by_date = {}
    for i, ts in ipairs(stamps) do
      local o, h, l, c = open[i], high[i], low[i], close[i]
      if not (is_null(o) or is_null(h) or is_null(l) or is_null(c)) then
        local d = date.format(ts, offset)    -- the exchange's local trading date
        if d >= req.start_date and d <= req.end_date then
          local bar = { date = d, open = o, high = h, low = l, close = c }
          if not is_null(volume[i]) then bar.volume = volume[i] end
          if not is_null(adj[i]) then bar.adjclose = adj[i] end
          by_date[d] = bar                   -- a repeated day (the live bar) keeps the last
        end
      end
    end

    local bars = {}
    for _, bar in pairs(by_date) do bars[#bars + 1] = bar end
    table.sort(bars, function(a, b) return a.date < b.date end)

    return {
      bars = bars,    -- empty means "no data" (404) for this range
      meta = {
        currency = meta.currency,
        exchange = meta.exchangeName,
        timezone = meta.exchangeTimezoneName or meta.timezone,
      },
    }
  end,
}
