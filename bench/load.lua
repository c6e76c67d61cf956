-- Load script for wrk (Debian's wrk 4.1, LuaJIT). One script for every scenario.
--
-- wrk <opts> -s load.lua URL -- ITEMS_FILE PATH_TPL BODY_TPL LIMIT SECONDS AUTH NTHREADS [RATE]
--   ITEMS_FILE  one item per line ("-" for none); "{item}" in PATH_TPL/BODY_TPL is replaced by it
--   BODY_TPL    "" for GET, else the POST body; "{n}" becomes a number unique in the run
--   LIMIT       total requests for the run split over the threads (0 = as many as SECONDS allow);
--               with a limit, thread t takes its own slice of the items, each item once
--   SECONDS     after this long a thread sends nothing new
--   AUTH        bearer token, "@FILE" (one token per line, taken in turn request by request) or "-"
--   RATE        requests per second for the whole run, split over the threads (0 or absent = as
--               fast as the server answers). Request k of a thread is due at k / (its rate)
--               after its first; a connection waits in delay() until then. wrk measures a
--               request's latency from when it is written, so a request sent after its time
--               (every connection busy) would hide the wait: such requests are counted as late
--               (over 10 ms after their time), with the largest lateness, and reported.
--
-- Bounded and exact: once a thread has sent its share (or its time is up) it sends nothing
-- more (delay() parks the connection) and stops itself as soon as every request it sent has
-- been answered (see stop()). So no request is ever in flight when wrk ends, and the status counts printed
-- at the end are every answer the server gave: the benchmark can check them against the
-- database. wrk's own -d is only a safety net.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local items, path_tpl, body_tpl, method, hdrs, tokens
local limit, first, deadline, nthreads, interval, paced_from
sent, received, statuses = 0, 0, {}
late, late_max = 0, 0
local draining, stopped, reserved = false, false, 0
-- wrk 4.1 calls request() once on thread 0's state right after init() to check the request
-- (script_verify_request); that call is not sent, so it is not counted.
local verifying = false

function init(args)
  local file = args[1]
  path_tpl, body_tpl = args[2], args[3]
  local total = tonumber(args[4])
  local seconds = tonumber(args[5])
  local auth = args[6]
  nthreads = tonumber(args[7])
  local rate = tonumber(args[8] or "0") or 0
  interval = rate > 0 and nthreads / rate or nil
  items = {}
  if file ~= "-" then
    for line in io.lines(file) do
      if #line > 0 then items[#items + 1] = line end
    end
  end
  if #items == 0 then items[1] = "x" end
  hdrs = {}
  if auth:sub(1, 1) == "@" then
    tokens = {}
    for line in io.lines(auth:sub(2)) do
      if #line > 0 then tokens[#tokens + 1] = line end
    end
  elseif auth ~= "-" then
    hdrs["Authorization"] = "Bearer " .. auth
  end
  if body_tpl == "" then
    method = "GET"
  else
    method = "POST"
    hdrs["Content-Type"] = "application/json"
  end
  if total > 0 then
    -- this thread's slice of the items: [first, first + limit)
    local base = math.floor(total / nthreads)
    local extra = total % nthreads
    limit = base + ((tid < extra) and 1 or 0)
    first = tid * base + math.min(tid, extra)
  else
    limit = -1
    first = math.floor(tid * #items / nthreads)
  end
  deadline = now() + seconds
  verifying = (tid == 0)
end

function request()
  local k = sent
  if verifying then
    verifying = false
  else
    sent = sent + 1
  end
  local item = items[((first + k) % #items) + 1]
  local path = path_tpl:gsub("{item}", item)
  if tokens then hdrs["Authorization"] = "Bearer " .. tokens[((first + k) % #tokens) + 1] end
  local body = nil
  if method == "POST" then
    body = body_tpl:gsub("{item}", item):gsub("{n}", tostring(tid * 100000000 + k))
  end
  return wrk.format(method, path, hdrs, body)
end

local function finished()
  return (limit >= 0 and reserved >= limit) or now() >= deadline
end

local function stop()
  -- wrk's main thread sleeps for the whole -d; the harness reads this line and sends wrk
  -- SIGINT once every thread has said it, which ends the run at once.
  if not stopped then
    stopped = true
    io.write(string.format("BENCH-THREAD-DONE %d\n", tid))
    io.stdout:flush()
    wrk.thread:stop()
  end
end

-- Every request reserved in delay() has been sent, and every request sent has been answered.
-- (At a fixed rate a reserved request may still be waiting for its time.)
local function idle()
  return sent >= reserved and received >= sent
end

-- wrk calls delay() before every request it sends, so a request is reserved here: several
-- connections may pass this point before any of them calls request().
function delay()
  if not draining and finished() then draining = true end
  local t, due
  if not draining and interval then
    t = now()
    paced_from = paced_from or t
    due = paced_from + reserved * interval
    if due >= deadline then draining = true end
  end
  if draining then
    if idle() then stop() end
    return 3600000 -- park this connection; the thread stops first
  end
  reserved = reserved + 1
  if interval then
    local wait = due - t
    if wait > 0 then return math.ceil(wait * 1000) end
    if -wait > 0.010 then late = late + 1 end
    if -wait > late_max then late_max = -wait end
  end
  return 0
end

function response(status, headers, body)
  received = received + 1
  statuses[status] = (statuses[status] or 0) + 1
  if draining and idle() then stop() end
end

function done(summary, latency, requests)
  local by_status, total_sent, total_received, total_late, max_late = {}, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    for code, count in pairs(t:get("statuses")) do
      by_status[code] = (by_status[code] or 0) + count
    end
    total_sent = total_sent + t:get("sent")
    total_received = total_received + t:get("received")
    total_late = total_late + t:get("late")
    max_late = math.max(max_late, t:get("late_max"))
  end
  local parts = {}
  for code, count in pairs(by_status) do parts[#parts + 1] = string.format('"%d": %d', code, count) end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"duration_us": %d, "requests": %d, "sent": %d, "received": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"late": %d, "max_late_us": %d, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, "statuses": {%s}}\n',
    summary.duration, summary.requests, total_sent, total_received,
    e.connect, e.read, e.write, e.status, e.timeout, total_late, math.floor(max_late * 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ", ")))
end
