-- Daily bars from bench/trace.py's counting upstream (TRACE_UPSTREAM): the
-- overlapping-trace replay of bench/run.sh counts the calls and the days
-- tickerd asks of it. One upstream call per plugin call, for exactly the
-- interval tickerd asked for.
return {
  ttl = "1h",
  env = { "TRACE_UPSTREAM" },
  fetch = function(req)
    local base = env.get("TRACE_UPSTREAM")
    if not base then error("set TRACE_UPSTREAM to the trace upstream's URL", 0) end
    local res = http.get(base .. "/bars", {
      query = { ticker = req.ticker, start = req.start_date, ["end"] = req.end_date },
      timeout = "5s",
    })
    if res.status ~= 200 then error("trace upstream answered " .. res.status .. ": " .. res.body, 0) end
    return { bars = json.decode(res.body).bars }
  end,
}
