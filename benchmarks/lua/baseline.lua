-- baseline: the same order body and headers as market_orders, sent to the bare FastAPI app in
-- benchmarks/baseline_app.py (parse with pydantic, return it). The ceiling for this stack.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

local data = bench.load_data()
local token = data.token or "x"
local req = nil

function request()
  if req == nil then
    req = wrk.format("POST", "/api/v1/orders", bench.headers(token, true),
      '{"order_type":"market_buy","asset_id":"BTC","quantity":"0.0001"}')
  end
  return req
end
