-- wrk script: 16 requests per write, pipelined on every connection (HTTP/1.1, keep-alive).
-- Usage: wrk -t1 -c256 -d10s -s bench/wrk/pipeline.lua http://127.0.0.1:8080/plaintext
-- wrk counts every response it parses, so its Requests/sec is the real pipelined rate.
local depth = tonumber(os.getenv("PIPELINE_DEPTH") or "16")

init = function(args)
    local r = {}
    for i = 1, depth do
        r[i] = wrk.format(nil, nil)
    end
    batch = table.concat(r)
end

request = function()
    return batch
end
