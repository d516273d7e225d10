-- wrk script for `python -m stage3_moderation.bench`: POST the bodies of a file (one JSON body per
-- line) in turn to WRK_PATH (default /v1/moderations), and write each answer's status and
-- Server-Timing to a file.
--   BODIES=bodies.jsonl RECORD=out.tsv wrk -t1 -c32 -d10s -s moderations.lua http://127.0.0.1:8000
local bodies, next_body, path = {}, 0, os.getenv("WRK_PATH") or "/v1/moderations"
records = {} -- global: done() reads each thread's copy with thread:get
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end

function setup(thread)
  threads = threads or {}
  table.insert(threads, thread)
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[next_body])
end

function response(status, headers, body)
  records[#records + 1] = status .. "\t" .. (headers["server-timing"] or headers["Server-Timing"] or "")
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("RECORD"), "w")
  out:write(string.format("# requests=%d seconds=%.6f p50_us=%d p99_us=%d errors=%d\n", summary.requests,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  for _, thread in ipairs(threads) do
    for _, record in ipairs(thread:get("records")) do out:write(record, "\n") end
  end
  out:close()
end
