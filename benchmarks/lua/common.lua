-- Shared by every scenario script: the generated data file, status counting and the JSON summary.
--
-- A scenario script starts with
--     local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
-- and then defines `request()`. `bench.install()` defines wrk's `setup`, `response` and `done`;
-- a scenario that needs to read responses defines its own `response` and calls `bench.count`.
--
-- wrk runs this file in the main Lua state (setup, done) and in each thread's state (request,
-- response). Counters are globals of the thread's state so that `done()` can read them back with
-- `thread:get`, which copies tables between states.

local M = {}

-- Status counts ("201" -> n) and, for 4xx/5xx answers, problem codes ("422:insufficient_funds" -> n).
statuses = {}
codes = {}

-- The data file `benchmarks.run` generates for the scenario (tokens, assets, amounts): a Lua
-- chunk returning a table. Missing only when a script is run by hand without it.
function M.load_data()
  local path = os.getenv("BENCH_DATA")
  if path == nil or path == "" then
    return {}
  end
  return dofile(path)
end

function M.count(status, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status >= 400 and body ~= nil then
    local code = string.match(body, '"code"%s*:%s*"([^"]+)"')
    if code ~= nil then
      local name = key .. ":" .. code
      codes[name] = (codes[name] or 0) + 1
    end
  end
end

local function json_value(value)
  local kind = type(value)
  if kind == "number" then
    if value ~= value or value == math.huge or value == -math.huge then
      return "null"
    end
    return string.format("%.17g", value)
  elseif kind == "table" then
    local parts = {}
    for k, v in pairs(value) do
      parts[#parts + 1] = string.format("%q", tostring(k)) .. ":" .. json_value(v)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif kind == "string" then
    return string.format("%q", value)
  elseif kind == "boolean" then
    return tostring(value)
  end
  return "null"
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    into[k] = (into[k] or 0) + v
  end
end

local threads = {}

function M.setup(thread)
  threads[#threads + 1] = thread
end

function M.response(status, headers, body)
  M.count(status, body)
end

-- One line, `BENCH_RESULT {json}`, that `benchmarks.run` picks out of wrk's output.
-- Latencies in wrk's unit (microseconds), converted to milliseconds here.
function M.done(summary, latency, requests)
  local all_statuses, all_codes = {}, {}
  for _, thread in ipairs(threads) do
    merge(all_statuses, thread:get("statuses"))
    merge(all_codes, thread:get("codes"))
  end
  local seconds = summary.duration / 1e6
  local result = {
    requests = summary.requests,
    duration_s = seconds,
    rps = seconds > 0 and summary.requests / seconds or 0,
    mean_ms = latency.mean / 1000,
    p50_ms = latency:percentile(50) / 1000,
    p90_ms = latency:percentile(90) / 1000,
    p99_ms = latency:percentile(99) / 1000,
    max_ms = latency.max / 1000,
    status_counts = all_statuses,
    error_codes = all_codes,
    socket_errors = {
      connect = summary.errors.connect,
      read = summary.errors.read,
      write = summary.errors.write,
      timeout = summary.errors.timeout,
    },
  }
  io.write("BENCH_RESULT " .. json_value(result) .. "\n")
end

function M.install()
  setup = M.setup
  response = M.response
  done = M.done
end

-- Headers every API request sends; `token` may be nil for public routes.
function M.headers(token, with_body)
  local headers = { ["Accept"] = "application/json" }
  if token ~= nil then
    headers["Authorization"] = "Bearer " .. token
  end
  if with_body then
    headers["Content-Type"] = "application/json"
  end
  return headers
end

return M
