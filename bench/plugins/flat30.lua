-- 30 bars without I/O and almost no work of its own: measures tickerd's
-- per-call overhead (HTTP, single-flight, Lua call, contract check, cache write).
return {
  ttl = "1h",
  fetch = function(req)
    local t0 = date.parse(req.start_date)
    local bars = {}
    for i = 0, 29 do
      local p = 100 + i
      bars[i + 1] = { date = date.format(t0 + i * 86400), open = p, high = p + 1, low = p - 1, close = p + 0.5, volume = 1000 + i }
    end
    return { bars = bars }
  end,
}
