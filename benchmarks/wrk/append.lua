-- wrk script: POST one message to a session picked at random from the file named by the first
-- script argument (one session id a line). The API key comes from the second argument.
local sessions = {}
local body = '{"role":"user","content":"a benchmark message of about one hundred characters, like a short agent turn in a fleet."}'

function init(args)
  for line in io.lines(args[1]) do
    sessions[#sessions + 1] = line
  end
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end

function request()
  return wrk.format(nil, "/sessions/" .. sessions[math.random(#sessions)] .. "/messages")
end
