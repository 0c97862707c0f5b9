-- POST one body with given headers, count what wrk's own summary leaves out, print one JSON line at the end.
--
--   wrk -t2 -c8 -d8s -s bench/wrk_post.lua URL -- BODY_FILE ["Name: value" ...]
--
-- wrk's summary counts only statuses above 399 as errors (a 301 would pass), and not the requests still in
-- flight when it stops; each thread counts non-2xx answers and requests sent, and done() adds them up.
-- Latencies are in microseconds, as wrk keeps them.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   for index = 2, #args do
      local name, value = args[index]:match("^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   sent, non2xx = 0, 0
   prepared = wrk.format()
end

function request()
   sent = sent + 1
   return prepared
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local sent_total, non2xx_total = 0, 0
   for _, thread in ipairs(threads) do
      sent_total = sent_total + thread:get("sent")
      non2xx_total = non2xx_total + thread:get("non2xx")
   end
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "sent": %d, "non2xx": %d, "duration_us": %d, "bytes": %d, '
         .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "status_errors": %d, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
      summary.requests, sent_total, non2xx_total, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.timeout, errors.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max
   ))
end
