-- wrk's shape for `flagstore serve`: every request evaluates one flag for a new targetingKey.
--
--   FLAGSTORE_TOKEN=fst_... FLAG=enrich \
--     wrk -t2 -c64 -d8s --latency -s bench/ofrep_eval.lua http://127.0.0.1:8016
--
-- FLAGSTORE_TOKEN: a token of the served store (`flagstore token create bench`); FLAG: the flag
-- asked for (default enrich). Keys differ per wrk thread and per request, so every request is a
-- sticky miss: an assignment and a decision record written, durably, before the answer.
local token = os.getenv("FLAGSTORE_TOKEN") or ""
local flag = os.getenv("FLAG") or "enrich"
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

local sent = 0

function request()
  sent = sent + 1
  local body = string.format('{"context":{"targetingKey":"wrk-%s-%d-%d"}}', id, sent, math.random(1e9))
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
