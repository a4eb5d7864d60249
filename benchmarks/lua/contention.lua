-- contention: ONE user, every connection at once doing deposit, market buy, withdraw and market
-- sell in turn (the original system's lock scenario). Each answer must be 201 or a 4xx refusal.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

local data = bench.load_data()
local token = data.token
local requests = {}
local n = 0

function init(args)
  local h = bench.headers(token, true)
  local order = '{"order_type":"market_%s","asset_id":"%s","quantity":"%s"}'
  local amount = string.format('{"amount":"%s"}', data.amount)
  requests = {
    wrk.format("POST", "/api/v1/balance/deposit", h, amount),
    wrk.format("POST", "/api/v1/orders", h, string.format(order, "buy", data.asset, data.qty)),
    wrk.format("POST", "/api/v1/balance/withdraw", h, amount),
    wrk.format("POST", "/api/v1/orders", h, string.format(order, "sell", data.asset, data.qty)),
  }
end

function request()
  n = n + 1
  return requests[(n - 1) % #requests + 1]
end
