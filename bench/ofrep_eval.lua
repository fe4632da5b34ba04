-- wrk's shape for `flagstore serve`: every request evaluates one flag for a new targetingKey,
-- a random UUID (version 4), as tenant and user ids arrive: keys that count up would each land
-- at the end of every index, the kindest case, and not what users send.
--
--   flagstore --db bench.db import examples/pipeline.json
--   python3 -c 'import uuid; print("\n".join(str(uuid.uuid4()) for _ in range(1000000)))' |
--     flagstore --db bench.db eval ingest --contexts-file - --no-progress > /dev/null
--   flagstore --db bench.db token create bench      # prints the token
--   flagstore --db bench.db serve --listen 127.0.0.1:8016 &
--   FLAGSTORE_TOKEN=fst_... FLAG=enrich \
--     wrk -t2 -c64 -d8s --latency -s bench/ofrep_eval.lua http://127.0.0.1:8016
--
-- The second command gives the store the 1,000,000 contexts a benchmark starts from. Bytes
-- written per request: `write_bytes` of /proc/PID/io of serve before and after, divided by
-- the requests wrk reports. FLAGSTORE_TOKEN: a token of the served store; FLAG: the flag asked
-- for (default enrich). Every request is a sticky miss: an assignment and a decision record
-- written, durably, before the answer.
local token = os.getenv("FLAGSTORE_TOKEN") or ""
local flag = os.getenv("FLAG") or "enrich"
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

-- Each thread has a Lua state of its own: seeded apart, so no two threads send the same keys.
function init(args)
  math.randomseed(os.time() * 1000 + id)
end

local function uuid4()
  local function hex(digits)
    return string.format("%0" .. digits .. "x", math.random(0, 16 ^ digits - 1))
  end
  return hex(8) .. "-" .. hex(4) .. "-4" .. hex(3) .. "-" ..
    string.format("%x", math.random(8, 11)) .. hex(3) .. "-" .. hex(6) .. hex(6)
end

function request()
  local body = string.format('{"context":{"targetingKey":"%s"}}', uuid4())
  return wrk.format("POST", "/ofrep/v1/evaluate/flags/" .. flag, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

function response(status)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\n")
  end
end
