"""A tiny OpenAI-compatible upstream that records every request body and answers chat
completions with a tool call (plain or streamed), so tests can check that the gateway
passes `tools`, `tool_choice`, tool-call messages and tool-call answers through intact.

Usage: capture_upstream.py FILE  -- appends one JSON line per request body to FILE and
prints `listening on 127.0.0.1:PORT` once ready."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = sys.argv[1]
TOOL_CALL = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"},
}
USAGE = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        req = json.loads(body)
        with open(OUT, "a") as f:
            f.write(json.dumps({"path": self.path, "body": req}) + "\n")
        base = {"id": "chatcmpl-cap", "created": 1700000000, "model": req.get("model", "?")}
        if req.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            head = dict(TOOL_CALL, function={"name": "get_weather", "arguments": ""}, index=0)
            args = TOOL_CALL["function"]["arguments"]
            deltas = [
                {"role": "assistant", "content": None, "tool_calls": [head]},
                {"tool_calls": [{"index": 0, "function": {"arguments": args[:10]}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": args[10:]}}]},
            ]
            events = [dict(base, object="chat.completion.chunk",
                           choices=[{"index": 0, "delta": d, "finish_reason": None}]) for d in deltas]
            events.append(dict(base, object="chat.completion.chunk",
                               choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
            if (req.get("stream_options") or {}).get("include_usage"):
                events.append(dict(base, object="chat.completion.chunk", choices=[], usage=USAGE))
            for e in events:
                self.wfile.write(b"data: " + json.dumps(e).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        answer = dict(base, object="chat.completion", usage=USAGE, choices=[{
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            "finish_reason": "tool_calls",
        }])
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
