-- SPDX-License-Identifier: MIT
-- wrk script of bench/run. BENCH_WRK_MODE selects the request:
--   create   POST /api/tasks (print(1), named $DTASK_BENCH_NAME, TTL $BENCH_TTL)
--   get      GET /api/tasks/{id}, id drawn at random from the lines of $BENCH_IDS_FILE
--            (with BENCH_NO_CACHE=1: Cache-Control: no-cache, so dtask-api reads the database)
--   auth     GET /api/tasks/not-a-task-id with the key: authenticated (cached key), then
--            answered 404 without touching the database
--   noauth   the same without a key: 401 before any key lookup
--   healthz  GET /healthz
-- At the end one line "BENCH-JSON {...}" with the counts and latency percentiles (µs).

local mode = os.getenv("BENCH_WRK_MODE") or "healthz"
local key = os.getenv("DTASK_API_KEY") or ""
local ids = {}

if mode == "create" then
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["X-ApiKey"] = key
   wrk.body = string.format('{"name":"%s","code":"print(1)","language":"Python","ttl":"%s"}',
                            os.getenv("DTASK_BENCH_NAME") or "bench", os.getenv("BENCH_TTL") or "01:00:00")
   wrk.path = "/api/tasks"
elseif mode == "get" then
   wrk.headers["X-ApiKey"] = key
   if os.getenv("BENCH_NO_CACHE") == "1" then
      wrk.headers["Cache-Control"] = "no-cache"
   end
   for line in io.lines(os.getenv("BENCH_IDS_FILE")) do
      ids[#ids + 1] = line
   end
elseif mode == "auth" then
   wrk.headers["X-ApiKey"] = key
   wrk.path = "/api/tasks/not-a-task-id"
elseif mode == "noauth" then
   wrk.path = "/api/tasks/not-a-task-id"
else
   wrk.path = "/healthz"
end

function setup(thread)
   thread:set("seed", math.random(1, 1000000))
end

function init(args)
   math.randomseed(seed or os.time())
end

if mode == "get" then
   request = function()
      return wrk.format("GET", "/api/tasks/" .. ids[math.random(#ids)])
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH-JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect_errors":%d,"read_errors":%d,' ..
      '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
