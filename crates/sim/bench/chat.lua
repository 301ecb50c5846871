-- wrk script: non-streaming chat completions against sluice-sim.
-- Usage: wrk -t2 -c64 -d30s -s crates/sim/bench/chat.lua http://127.0.0.1:PORT
-- The exact admitted/refused counts are in GET /stats afterwards.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"qwen3-max","messages":[{"role":"system","content":"You are a load test."},{"role":"user","content":"Say something short about rate limits."}],"max_tokens":16}'
