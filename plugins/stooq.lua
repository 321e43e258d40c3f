-- stooq: daily bars from stooq.com's CSV download.
--
--   GET {base}/q/d/l/?s={symbol}&d1=YYYYMMDD&d2=YYYYMMDD&i=d
--
-- Set STOOQ_BASE_URL to point it elsewhere (a mirror, a test server).
-- Stooq symbols are lower case with a market suffix: a ticker without a dot
-- is taken as a US listing (AAPL -> aapl.us, BRK-B -> brk-b.us); give the
-- suffix yourself for other markets (VOD.UK, 7203.JP) or none for indices.
--
-- The answer is CSV with the header Date,Open,High,Low,Close,Volume (indices
-- have no Volume column), or the plain text "No data" for an unknown symbol
-- or an empty range.

local function symbol(ticker)
  local s = ticker:lower()
  if not s:find(".", 1, true) then s = s .. ".us" end
  return s
end

local function compact(d)           -- "2024-01-31" -> "20240131"
  return (d:gsub("-", ""))
end

return {
  description = "Daily bars from Stooq (CSV download)",
  ttl = "6h",
  timeout = "10s",
  cache_version = 1,
  env = { "STOOQ_BASE_URL" },

  fetch = function(req)
    local base = env.get("STOOQ_BASE_URL") or "https://stooq.com"
    local res = http.get(base .. "/q/d/l/", {
      query = { s = symbol(req.ticker), d1 = compact(req.start_date), d2 = compact(req.end_date), i = "d" },
      timeout = "8s",
    })
    if res.status == 404 then
      errors.no_data("stooq has no data for " .. req.ticker)
    elseif res.status ~= 200 then
      errors.upstream("stooq answered " .. res.status)
    end

    local body = res.body:gsub("^\239\187\191", "")   -- drop a UTF-8 byte order mark
    local first_line = body:match("^([^\r\n]*)")
    if first_line:match("^%s*No data") then
      errors.no_data("stooq has no data for " .. symbol(req.ticker) .. " in this range")
    end
    if not first_line:match("^Date,") then
      -- e.g. "Exceeded the daily hits limit": not data, and never cached.
      errors.upstream("stooq did not answer CSV: " .. first_line:sub(1, 200))
    end

    local bars = {}
    for _, row in ipairs(csv.parse(body, { header = true })) do
      local d = row.Date
      local o, h, l, c = tonumber(row.Open), tonumber(row.High), tonumber(row.Low), tonumber(row.Close)
      if d and d >= req.start_date and d <= req.end_date and o and h and l and c then
        bars[#bars + 1] = { date = d, open = o, high = h, low = l, close = c, volume = tonumber(row.Volume) }
      end
    end
    table.sort(bars, function(a, b) return a.date < b.date end)
    return { bars = bars, meta = { symbol = symbol(req.ticker) } }
  end,
}
