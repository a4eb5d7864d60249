-- market_orders: many users placing small market buys and sells.
-- Request n goes to user n % U; each user buys an asset, then sells the same quantity back,
-- then moves to the next asset, so holdings and cash stay near what the set-up gave them.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

local data = bench.load_data()
local tokens = data.tokens or {}
local assets = data.assets or {}
local cache = {}
local n = 0

local function order(token, side, asset)
  local body = string.format('{"order_type":"market_%s","asset_id":"%s","quantity":"%s"}', side, asset.id, asset.qty)
  return wrk.format("POST", "/api/v1/orders", bench.headers(token, true), body)
end

function request()
  local users = #tokens
  local user = n % users
  local round = math.floor(n / users)
  local side = (round % 2 == 0) and "buy" or "sell"
  local asset = math.floor(round / 2) % #assets
  n = n + 1
  local key = user * 2 * #assets + asset * 2 + (side == "buy" and 0 or 1)
  local req = cache[key]
  if req == nil then
    req = order(tokens[user + 1], side, assets[asset + 1])
    cache[key] = req
  end
  return req
end
