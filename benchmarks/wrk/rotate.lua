-- POST /v1/predict (or another path), rotating the API key and the body over pre-encoded
-- requests.
-- Usage: wrk ... -s rotate.lua <url> -- <data file> [<path>]
-- The data file holds one request per line: "<api key>\t<json body>". Each wrk thread walks
-- the list from its own offset, so keys are used evenly and each key sees varied digits.

local counter = 1
local threads = 0

function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

function init(args)
  local path = args[1]
  route = args[2] or "/v1/predict"
  local file = assert(io.open(path, "r"), "cannot open data file " .. tostring(path))
  requests = {}
  for line in file:lines() do
    local key, body = line:match("^([^\t]+)\t(.+)$")
    if key then
      requests[#requests + 1] = wrk.format("POST", route, {
        ["Authorization"] = "Bearer " .. key,
        ["Content-Type"] = "application/json",
      }, body)
    end
  end
  file:close()
  assert(#requests > 0, "no requests in " .. path)
  counter = ((offset or 0) * 7919) % #requests + 1
end

function request()
  local req = requests[counter]
  counter = counter % #requests + 1
  return req
end
