-- wrk script: `refresh=true` on a new key per request and per wrk thread
-- (wrk threads share no counter), so no two requests coalesce and every
-- request is one plugin call. Set by the caller's environment:
--   REFRESH_PLUGIN (flat30), REFRESH_PREFIX (R), REFRESH_END (2024-01-30)
local plugin = os.getenv("REFRESH_PLUGIN") or "flat30"
local prefix = os.getenv("REFRESH_PREFIX") or "R"
local end_date = os.getenv("REFRESH_END") or "2024-01-30"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  counter = 0
end
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/data/" .. plugin .. "/" .. prefix .. tid .. "x" .. counter
    .. "?start=2024-01-01&end=" .. end_date .. "&refresh=true")
end
