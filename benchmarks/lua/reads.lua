-- reads: a front end's read mix, round robin over users: health, profile, asset list, balance,
-- portfolio. Public routes are called without a token, as a browser that is not signed in would.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

local data = bench.load_data()
local tokens = data.tokens or {}
local routes = {
  { "/health", false },
  { "/api/v1/auth/profile", true },
  { "/api/v1/inventory/assets", false },
  { "/api/v1/balance", true },
  { "/api/v1/portfolio", true },
}
local cache = {}
local n = 0

function request()
  local route = n % #routes
  local user = math.floor(n / #routes) % #tokens
  n = n + 1
  local path, authed = routes[route + 1][1], routes[route + 1][2]
  local key = authed and (route * #tokens + user) or -(route + 1)
  local req = cache[key]
  if req == nil then
    req = wrk.format("GET", path, bench.headers(authed and tokens[user + 1] or nil, false))
    cache[key] = req
  end
  return req
end
