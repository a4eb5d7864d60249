-- resting_orders: place a limit buy far below the market, then cancel it (DELETE).
-- A placement's answer names the order; the user is known from the X-Request-ID the request
-- carried (the gateway echoes it), so the next free connection cancels that order as its owner.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

local data = bench.load_data()
local tokens = data.tokens or {}
local pending = {}  -- {order_id, user} waiting to be cancelled
local n = 0

function request()
  local job = table.remove(pending)
  if job ~= nil then
    return wrk.format("DELETE", "/api/v1/orders/" .. job[1], bench.headers(tokens[job[2] + 1], false))
  end
  local user = n % #tokens
  n = n + 1
  local headers = bench.headers(tokens[user + 1], true)
  headers["X-Request-ID"] = string.format("bench-u%d-%d", user, n)
  local body = string.format(
    '{"order_type":"limit_buy","asset_id":"%s","quantity":"%s","price":"%s"}', data.asset, data.qty, data.price
  )
  return wrk.format("POST", "/api/v1/orders", headers, body)
end

function response(status, headers, body)
  bench.count(status, body)
  if status == 201 then
    local order_id = string.match(body, '"order_id"%s*:%s*"([^"]+)"')
    local rid = headers["x-request-id"] or headers["X-Request-ID"] or ""
    local user = string.match(rid, "^bench%-u(%d+)%-")
    if order_id ~= nil and user ~= nil then
      pending[#pending + 1] = { order_id, tonumber(user) }
    end
  end
end
