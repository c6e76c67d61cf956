-- Load script for wrk (Debian's wrk 4.1, LuaJIT). One script for every scenario.
--
-- wrk <opts> -s load.lua URL -- ITEMS_FILE PATH_TPL BODY_TPL LIMIT SECONDS AUTH NTHREADS [RATE [CTYPE [HEADERS]]]
--   ITEMS_FILE  one item per line ("-" for none); in PATH_TPL, BODY_TPL and the HEADERS, "{item}"
--               is replaced by the line and "{1}", "{2}", ... by its tab-separated fields
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
--   CTYPE       Content-Type of a POST body ("-" or absent: application/json)
--   HEADERS     a file of further headers, one "Name: value" a line, with the placeholders
--               above (a session cookie, X-Forwarded-For per item); "-" or absent: none
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

local items, fields, path_tpl, body_tpl, method, hdrs, tokens, header_tpls
local limit, first, deadline, nthreads, interval, paced_from, seconds_total
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
  local ctype = args[9] or "-"
  local header_file = args[10] or "-"
  items, fields = {}, {}
  if file ~= "-" then
    for line in io.lines(file) do
      if #line > 0 then
        items[#items + 1] = line
        local parts = {}
        for part in (line .. "\t"):gmatch("([^\t]*)\t") do parts[#parts + 1] = part end
        fields[#items] = parts
      end
    end
  end
  if #items == 0 then
    items[1] = "x"
    fields[1] = {"x"}
  end
  header_tpls = {}
  if header_file ~= "-" then
    for line in io.lines(header_file) do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then header_tpls[#header_tpls + 1] = {name, value} end
    end
  end
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
    hdrs["Content-Type"] = (ctype ~= "-") and ctype or "application/json"
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
  seconds_total = seconds
  deadline = now() + seconds
  verifying = (tid == 0)
end

-- The template with "{item}", "{1}", "{2}", ... (and "{n}" when given) filled in; a function as the
-- replacement, so that a "%" in an item is taken as it is.
local function fill(tpl, index, n)
  local item, parts = items[index], fields[index]
  local out = tpl:gsub("{item}", function() return item end)
  out = out:gsub("{(%d+)}", function(i) return parts[tonumber(i)] or "" end)
  if n then out = out:gsub("{n}", function() return n end) end
  return out
end

function request()
  local k = sent
  if verifying then
    verifying = false
  else
    sent = sent + 1
  end
  local index = ((first + k) % #items) + 1
  local path = fill(path_tpl, index)
  if tokens then hdrs["Authorization"] = "Bearer " .. tokens[((first + k) % #tokens) + 1] end
  for _, h in ipairs(header_tpls) do hdrs[h[1]] = fill(h[2], index) end
  local body = nil
  if method == "POST" then
    body = fill(body_tpl, index, tostring(tid * 100000000 + k))
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
  if interval and not paced_from then
    -- The schedule starts with the first send, and so does the time bound: a run at 200/s for
    -- 1 s sends 200, however long the start took on a busy machine.
    paced_from = now()
    deadline = paced_from + seconds_total
  end
  if not draining and finished() then draining = true end
  local t, due
  if not draining and interval then
    t = now()
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
