-- wrk script: POST a Kommo "incoming message" webhook with a new message id every request.
--
-- The body comes from bench/kommo_body.py through BENCH_BODY_TEMPLATE (one source for wrk
-- and the open-loop generator); "{MESSAGE_ID}" in it is replaced per request. A repeated
-- id would be answered from the dedupe key and measure a cheaper path than real traffic.
--
--   BENCH_BODY_TEMPLATE="$(python -m bench.kommo_body)" wrk -t2 -c64 -d10s --latency \
--     -s bench/post.lua 'http://127.0.0.1:8000/webhooks/kommo?secret=...'

local template = os.getenv("BENCH_BODY_TEMPLATE")
if template == nil or template == "" then
   error("BENCH_BODY_TEMPLATE is not set: run through `make bench` or see this file's header")
end
local placeholder = "{MESSAGE_ID}"
local at = string.find(template, placeholder, 1, true)
if at == nil then
   error("BENCH_BODY_TEMPLATE has no {MESSAGE_ID} placeholder")
end
local head = string.sub(template, 1, at - 1)
local tail = string.sub(template, at + #placeholder)

local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

-- Every wrk thread runs its own Lua state: give each a distinct number in setup(), which
-- runs in the main state, so ids never collide between threads.
local next_thread = 0
function setup(thread)
   next_thread = next_thread + 1
   thread:set("thread_id", next_thread)
end

local counter = 0
local run_tag = 0

function init(args)
   -- thread_id is set by setup() before init() runs in the thread's state.
   math.randomseed(os.time() * 1000 + thread_id)
   -- Random per run and thread: ids of two runs against the same Redis never collide.
   run_tag = math.random(0, 0x7fffffff)
end

function request()
   counter = counter + 1
   -- UUID-shaped, like Kommo's: run tag, thread, random bits, then the counter.
   local id = string.format(
      "%08x-%04x-4%03x-%04x-%012x",
      run_tag, thread_id % 0x10000, math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff), counter
   )
   return wrk.format("POST", nil, headers, head .. id .. tail)
end
