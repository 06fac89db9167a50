-- wrk script: POSTs pre-signed Nuki webhooks, rotating through a data file.
--
-- The data file (written by `bench/bench.py gen`) holds one webhook per line:
--   <hex HMAC-SHA256 of the body> <space> <JSON body>
-- Every request is formatted once in init(), so request() is a table lookup and the load
-- generator spends its time on the network, not in Lua.
--
-- Environment:
--   WEBHOOKS_FILE  data file (required)
--   WEBHOOKS_PATH  request path (default /webhook)
--   WEBHOOKS_MAX   stop after this many responses (default 0: run for wrk's -d duration)
--
-- done() prints one line `WRK_RESULT {json}` with the request count, errors and latency
-- percentiles (microseconds), which bench/bench.py reads.

local requests = {}
local count = 0
local next_index = 0

function init(args)
   local file = os.getenv("WEBHOOKS_FILE")
   assert(file, "WEBHOOKS_FILE is not set")
   local path = os.getenv("WEBHOOKS_PATH") or "/webhook"
   for line in io.lines(file) do
      local signature, body = line:match("^(%x+) (.+)$")
      if signature then
         count = count + 1
         requests[count] = wrk.format("POST", path, {
            ["Content-Type"] = "application/json",
            ["X-Nuki-Signature-SHA256"] = signature,
         }, body)
      end
   end
   assert(count > 0, "no webhooks in " .. file)

   local max = tonumber(os.getenv("WEBHOOKS_MAX") or "0")
   if max > 0 then
      -- Only defined when needed: wrk skips response parsing when response is nil.
      -- thread:stop() alone would leave wrk's main thread sleeping for the whole -d duration;
      -- SIGINT is how wrk is told to stop early, and it still prints its summary and done().
      local ffi = require("ffi")
      ffi.cdef[[
         int getpid(void);
         int kill(int pid, int sig);
      ]]
      local seen = 0
      local signalled = false
      response = function(status, headers, body)
         seen = seen + 1
         if seen >= max and not signalled then
            signalled = true
            ffi.C.kill(ffi.C.getpid(), 2)
         end
      end
   end
end

function request()
   next_index = next_index + 1
   if next_index > count then
      next_index = 1
   end
   return requests[next_index]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max))
end
