-- wrk script for `make bench`: every request is distinct, as real traffic is.
--
-- wrk -s bench/wrk.lua URL -- MODE USERS HISTORY_USERS HOT_USER TAG QUERY AUTH
--   MODE: topup | spend-hot | read-balance | graphql-wallet | graphql-transact | transfer
--         | batch1000 (an atomic batch of 1,000 BONUS over the thread's own 1,000 users)
--         | batch100 (an atomic batch of 100 BONUS over random users)
--   USERS: bench users are 1..USERS (ids 00000000-0000-4000-8000-<12 hex digits>)
--   HISTORY_USERS: graphql-wallet reads users 1..HISTORY_USERS (20+ entries each)
--   HOT_USER: the one wallet spend-hot drains
--   TAG: makes this run's Idempotency-Keys unique
--   QUERY: the GraphQL document (bench/scenarios.py holds them), "-" for REST modes
--   AUTH: an API key sent as Authorization: Bearer on every request, "-" for none
--
-- Transactions carry their own Idempotency-Key (TAG-thread-counter), so no request is a replay.
-- A response counts as `ok` only if it is a 200 whose body says it succeeded; `done` prints one
-- JSON line (prefixed BENCH_JSON) with the counts and latency percentiles for the harness.

local mode, users, history_users, hot_user, tag, query, auth
local counter = 0
ok = 0  -- globals: read from the main state with thread:get()
bad = 0
local threads = {}
local expect

JSON = { ["Content-Type"] = "application/json" }
BARE = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  mode = args[1]
  users = tonumber(args[2])
  history_users = tonumber(args[3])
  hot_user = args[4]
  tag = args[5]
  query = args[6]
  auth = args[7]
  if auth ~= nil and auth ~= "-" then
    JSON["Authorization"] = "Bearer " .. auth
    BARE = { ["Authorization"] = "Bearer " .. auth }
  end
  math.randomseed(os.time() * 1009 + id * 7919)
  if mode == "graphql-wallet" then
    expect = '"ledger"'
  elseif mode == "graphql-transact" then
    expect = '"TransactSuccess"'
  else
    expect = '"success":true'
  end
end

local function user(n)
  return string.format("00000000-0000-4000-8000-%012x", math.random(n))
end

local function key()
  counter = counter + 1
  return string.format("%s-%d-%d", tag, id, counter)
end

local function keyed()
  local headers = { ["Idempotency-Key"] = key() }
  for name, value in pairs(JSON) do headers[name] = value end
  return headers
end

local function transact(user_id, kind)
  local body = string.format(
    '{"userId":"%s","amount":1,"assetSlug":"gold_coins","type":"%s"}', user_id, kind)
  return wrk.format("POST", "/api/wallet/transact", keyed(), body)
end

local function transfer()
  -- two different users: a transfer to its own sender is refused (400), not a transfer
  local a = math.random(users)
  local b = (a + math.random(users - 1) - 1) % users + 1
  local from = string.format("00000000-0000-4000-8000-%012x", a)
  local to = string.format("00000000-0000-4000-8000-%012x", b)
  local body = string.format(
    '{"fromUserId":"%s","toUserId":"%s","amount":1,"assetSlug":"gold_coins"}', from, to)
  return wrk.format("POST", "/api/wallet/transfer", keyed(), body)
end

local function batch(size, first)
  local ops = {}
  for i = 1, size do
    local n = first and (first + i - 1) or math.random(users)
    ops[i] = string.format(
      '{"op":"BONUS","userId":"00000000-0000-4000-8000-%012x","amount":1,"assetSlug":"gold_coins"}',
      n)
  end
  local body = '{"atomic":true,"operations":[' .. table.concat(ops, ",") .. ']}'
  return wrk.format("POST", "/api/wallet/batch", keyed(), body)
end

function request()
  if mode == "topup" then
    return transact(user(users), "TOPUP")
  elseif mode == "spend-hot" then
    return transact(hot_user, "SPEND")
  elseif mode == "read-balance" then
    return wrk.format("GET", "/api/wallet/balance/" .. user(users), BARE)
  elseif mode == "transfer" then
    return transfer()
  elseif mode == "batch1000" then
    return batch(1000, (id - 1) * 1000 + 1)
  elseif mode == "batch100" then
    return batch(100, nil)
  elseif mode == "graphql-wallet" then
    local body = string.format('{"query":"%s","variables":{"id":"%s"}}',
      query, user(history_users))
    return wrk.format("POST", "/graphql", JSON, body)
  elseif mode == "graphql-transact" then
    local body = string.format(
      '{"query":"%s","variables":{"input":{"userId":"%s","amount":"1",'
        .. '"assetSlug":"gold_coins","type":"TOPUP","idempotencyKey":"%s"}}}',
      query, user(users), key())
    return wrk.format("POST", "/graphql", JSON, body)
  end
  error("unknown mode " .. tostring(mode))
end

function response(status, headers, body)
  if status == 200 and string.find(body, expect, 1, true) and not string.find(body, '"errors"', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local oks, bads = 0, 0
  for _, thread in ipairs(threads) do
    oks = oks + thread:get("ok")
    bads = bads + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"ok":%d,"bad":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, oks, bads, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
