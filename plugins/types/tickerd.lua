---@meta
-- LuaLS (lua-language-server) annotations for the tickerd plugin host API.
--
-- Editors use this file for completion and type checks; tickerd never runs it
-- (the loader skips subdirectories and files starting with ---@meta).
-- To use it outside this repository, point LuaLS at it, e.g. in .luarc.json:
--   { "runtime.version": "Lua 5.4", "workspace.library": ["plugins/types"] }
--
-- Each plugin file returns a tickerd.Plugin:
--
--   ---@type tickerd.Plugin
--   return { description = "...", ttl = "1h", fetch = function(req) ... end }

------------------------------------------------------------------------------
-- The plugin contract
------------------------------------------------------------------------------

---A duration: "250ms", "10s", "5m", "1h", "24h", or a number of seconds.
---@alias tickerd.Duration string|number

---What `fetch` receives.
---@class tickerd.Request
---@field ticker string      Upper-cased, matching ^[A-Z0-9.^=_-]{1,32}$ (e.g. "AAPL", "BHP.AX", "^GSPC").
---@field start_date string  First day wanted, "YYYY-MM-DD" (inclusive).
---@field end_date string    Last day wanted, "YYYY-MM-DD" (inclusive).
---@field plugin string      This plugin's name.
---@field params table<string, string> Extra request parameters (currently always empty).

---One daily bar. Extra number or string fields (e.g. `adjclose`) are kept.
---@class tickerd.Bar
---@field date string     The exchange's local trading date, "YYYY-MM-DD".
---@field open number
---@field high number
---@field low number
---@field close number
---@field volume? number  >= 0
---@field [string] number|string

---What `fetch` returns. `bars` sorted by date, all inside [start_date, end_date];
---an empty `bars` means "no data" (404, remembered for negative_ttl).
---@class tickerd.Output
---@field bars tickerd.Bar[]
---@field meta? table<string, any> Any JSON-able table, returned as is (currency, exchange, ...).

---The table a plugin file returns.
---@class tickerd.Plugin
---@field description? string
---@field ttl? tickerd.Duration       How long an answer is cached (config [plugins.<name>] ttl overrides).
---@field timeout? tickerd.Duration   Wall time of one fetch (default 30s).
---@field cache_version? integer      Bump it to orphan everything cached by older logic (default 1).
---@field env? string[]               Environment variables env.get may read.
---@field allow_hosts? string[]       Outbound HTTP allow-list ("host", "host:port", "*.domain").
---@field max_concurrency? integer    Fetches of this plugin running at once (default 64).
---@field rate_limit? string|string[] Upstream budget for the whole fleet: "10/s", "5/min", "100/h", "25/day", or a list.
---@field max_wait? tickerd.Duration  How long a call waits for a turn of rate_limit (default: timeout), else 429.
---@field fetch fun(req: tickerd.Request): tickerd.Output

------------------------------------------------------------------------------
-- http
------------------------------------------------------------------------------

---@class tickerd.HttpOptions
---@field method? string                               For http.request; default "GET".
---@field url? string                                  For http.request(opts).
---@field headers? table<string, string|number>
---@field query? table<string, string|number|boolean>  URL-encoded, keys sorted, appended to the URL.
---@field body? string|table                           A table is sent as JSON (content-type application/json).
---@field timeout? tickerd.Duration                    This call's limit, capped by the plugin's timeout.

---Any HTTP status is an answer: the plugin decides what a 404 or a 429 means.
---@class tickerd.HttpResponse
---@field status integer
---@field headers table<string, string> Lower-cased names; repeated headers joined with ", ".
---@field body string

---Outbound HTTP(S). Calls are async: a waiting plugin blocks no thread.
---Raises an upstream error (502 upstream_error) when no complete answer
---arrives (refused, DNS, TLS, timeout), and a plugin error when the body is
---larger than max_body (16 MiB by default) or the host is not in allow_hosts.
---Messages show the URL without its query string.
---@class tickerd.http
http = {}

---@param url string
---@param opts? tickerd.HttpOptions
---@return tickerd.HttpResponse
function http.get(url, opts) end

---@param url string
---@param opts? tickerd.HttpOptions
---@return tickerd.HttpResponse
function http.post(url, opts) end

---`http.request{ method = "PUT", url = ..., body = ... }` (or `http.request(url, opts)`).
---@param opts tickerd.HttpOptions|string
---@param more? tickerd.HttpOptions
---@return tickerd.HttpResponse
function http.request(opts, more) end

------------------------------------------------------------------------------
-- json
------------------------------------------------------------------------------

---@class tickerd.json
---JSON null, as decoded (compare with `v == json.null`). Encodes as null.
---@field null lightuserdata
json = {}

---Encodes a value. A table with keys 1..n is an array; an empty table is `[]`
---unless made with json.object(); other keys must be strings.
---@param value any
---@return string
function json.encode(value) end

---Decodes JSON text. null becomes json.null (not nil), so arrays keep their length.
---@param text string
---@return any
function json.decode(text) end

---Marks a table (a new one if omitted) to encode as an object even when empty.
---@param t? table
---@return table
function json.object(t) end

------------------------------------------------------------------------------
-- csv
------------------------------------------------------------------------------

---@class tickerd.CsvOptions
---@field header? boolean   First record names the fields (default true).
---@field separator? string One character (default ",").

---@class tickerd.csv
csv = {}

---Parses CSV text: quoted fields, "" escapes, LF/CRLF, a BOM, blank lines skipped.
---Values are strings (use tonumber). With header=true (the default) returns the
---rows as tables keyed by the header names, and the header names; with
---header=false an array of arrays.
---@param text string
---@param opts? tickerd.CsvOptions
---@return table[] rows
---@return string[]? header
function csv.parse(text, opts) end

------------------------------------------------------------------------------
-- log
------------------------------------------------------------------------------

---Log lines carry the plugin's name. `print` logs at info.
---@class tickerd.log
log = {}

---@param ... any
function log.debug(...) end

---@param ... any
function log.info(...) end

---@param ... any
function log.warn(...) end

---@param ... any
function log.error(...) end

------------------------------------------------------------------------------
-- env
------------------------------------------------------------------------------

---@class tickerd.env
env = {}

---Reads an environment variable listed in the plugin's `env` or in the config's
---[plugins.<name>] env; any other name is an error. nil when it is not set.
---@param name string
---@return string?
function env.get(name) end

------------------------------------------------------------------------------
-- date
------------------------------------------------------------------------------

---@class tickerd.date
date = {}

---"YYYY-MM-DD" -> unix seconds at 00:00 UTC of that day.
---@param ymd string
---@return integer
function date.parse(ymd) end

---Unix seconds -> "YYYY-MM-DD". With `utc_offset` (seconds east of UTC, e.g.
---Yahoo's gmtoffset) it is the local date at that offset.
---@param unix number
---@param utc_offset? number
---@return string
function date.format(unix, utc_offset) end

------------------------------------------------------------------------------
-- errors
------------------------------------------------------------------------------

---Raise a classified failure. A plain `error(...)` is a plugin_error (502).
---None of these is cached as data.
---@class tickerd.errors
errors = {}

---The data source refused the call for a while (a rate-limit answer): the plugin
---cools down fleet-wide for `retry_after_seconds` (default 60, at most 3600; nil
---takes a 429's Retry-After header); meanwhile requests get cached or stale data,
---else 429 rate_limited with Retry-After. A fetch that fails after an http call
---got 429 (or 503 with Retry-After) is treated the same way.
---@param message? string
---@param retry_after_seconds? number
function errors.rate_limited(message, retry_after_seconds) end

---The data source failed (5xx, malformed answer): 502 upstream_error.
---A cached answer still within stale_if_error is served instead, if there is one.
---@param message? string
function errors.upstream(message) end

---The source has nothing for this ticker/range: 404 no_data (remembered for negative_ttl).
---@param message? string
function errors.no_data(message) end
