"""A stand-in for the model APIs of Claude Code, Codex CLI and Gemini CLI.

Run inside a Warden session on its loopback (scripts/agents-e2e): the agent under test
is pointed at it, asks for one shell command (`echo made-by-AGENT > AGENT.txt && cat
AGENT.txt`) through the agent's own shell tool, and answers "done" once the tool's
result comes back. Each request is logged to LOG as one JSON line: the agent, the API
key the agent sent (to check that it is the session's placeholder, never the real key),
and the tool's output when there is one.

    python3 stand_in_api.py PORT LOG

Speaks only what these agents need: Anthropic Messages (streamed), OpenAI Responses
(streamed), Gemini generateContent / streamGenerateContent (SSE).
"""

import http.server
import json
import socketserver
import sys


def command(agent):
    return f"echo made-by-{agent} > {agent}.txt && cat {agent}.txt"


def sse(events):
    out = ""
    for name, data in events:
        if name:
            out += f"event: {name}\n"
        out += f"data: {json.dumps(data)}\n\n"
    return out.encode()


def anthropic(body):
    """Claude Code: Messages API, streamed."""
    last = (body.get("messages") or [{}])[-1].get("content")
    results = [c for c in last if isinstance(c, dict) and c.get("type") == "tool_result"] if isinstance(last, list) else []
    tools = [t.get("name") for t in body.get("tools", [])]
    if "Bash" in tools and not results:
        block = {"type": "tool_use", "id": "toolu_standin", "name": "Bash", "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps({"command": command("claude"), "description": "write a file"})}
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": "done"}
        stop = "end_turn"
    output = json.dumps([r.get("content") for r in results]) if results else None
    if not body.get("stream"):
        full = dict(block)
        if stop == "tool_use":
            full["input"] = json.loads(delta["partial_json"])
        else:
            full["text"] = "done"
        msg = {"id": "msg_standin", "type": "message", "role": "assistant", "model": body.get("model", "m"),
               "content": [full], "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": 1, "output_tokens": 1}}
        return "application/json", json.dumps(msg).encode(), output
    start = {"id": "msg_standin", "type": "message", "role": "assistant", "model": body.get("model", "m"),
             "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
    return "text/event-stream", sse([
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]), output


def openai(body):
    """Codex CLI: Responses API, streamed. Codex offers its shell as the `exec` custom tool
    (JavaScript calling `tools.exec_command`) or, in other versions, as a function."""
    items = [i for i in body.get("input", []) if isinstance(i, dict)]
    results = [i for i in items if i.get("type") in ("function_call_output", "custom_tool_call_output")]
    tools = list(body.get("tools", []))
    for i in items:
        if i.get("type") == "additional_tools":
            for t in i.get("tools", []):
                tools += t.get("tools", []) if t.get("type") == "namespace" else [t]
    names = {t.get("name"): t.get("type") for t in tools}
    cmd = command("codex")
    if results or not names:
        item = {"type": "message", "id": "msg_standin", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "done", "annotations": []}]}
    elif names.get("exec") == "custom":
        js = f"const r = await tools.exec_command({{cmd: {json.dumps(cmd)}}}); text(r);"
        item = {"type": "custom_tool_call", "id": "ctc_standin", "call_id": "call_standin", "name": "exec", "input": js, "status": "completed"}
    elif "exec_command" in names:
        item = {"type": "function_call", "id": "fc_standin", "call_id": "call_standin", "name": "exec_command",
                "arguments": json.dumps({"cmd": cmd}), "status": "completed"}
    else:
        item = {"type": "function_call", "id": "fc_standin", "call_id": "call_standin", "name": "shell",
                "arguments": json.dumps({"command": ["bash", "-lc", cmd]}), "status": "completed"}
    output = json.dumps([r.get("output") for r in results]) if results else None
    usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2,
             "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    done = {"id": "resp_standin", "object": "response", "status": "completed", "output": [item], "usage": usage}
    return "text/event-stream", sse([
        ("response.created", {"type": "response.created", "response": {"id": "resp_standin", "object": "response", "status": "in_progress", "output": []}}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
        ("response.completed", {"type": "response.completed", "response": done}),
    ]), output


def gemini(path, body):
    """Gemini CLI: generateContent (its request router wants JSON) and
    streamGenerateContent?alt=sse (the turn itself)."""
    parts = (body.get("contents") or [{}])[-1].get("parts", [])
    results = [p["functionResponse"] for p in parts if "functionResponse" in p]
    names = [f.get("name") for t in body.get("tools", []) for f in t.get("functionDeclarations", [])]
    if "responseJsonSchema" in json.dumps(body.get("generationConfig", {})):
        part = {"text": json.dumps({"complexity_reasoning": "one command", "complexity_score": 10})}
    elif "streamGenerateContent" in path and "run_shell_command" in names and not results:
        part = {"functionCall": {"name": "run_shell_command", "args": {"command": command("gemini"), "description": "write a file"}}}
    else:
        part = {"text": "done"}
    resp = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}}
    output = json.dumps([r.get("response") for r in results]) if results else None
    if "alt=sse" in path:
        return "text/event-stream", f"data: {json.dumps(resp)}\r\n\r\n".encode(), output
    return "application/json", json.dumps(resp).encode(), output


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.reply("application/json", b'{"data": [], "models": []}')

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.loads(raw or b"{}")
        h = self.headers
        if self.path.startswith("/v1/messages/count_tokens"):
            agent, (ctype, data, output) = "claude", ("application/json", b'{"input_tokens": 1}', None)
        elif self.path.startswith("/v1/messages"):
            agent, (ctype, data, output) = "claude", anthropic(body)
        elif self.path.startswith("/v1/responses"):
            agent, (ctype, data, output) = "codex", openai(body)
        elif self.path.startswith("/v1beta/models/"):
            agent, (ctype, data, output) = "gemini", gemini(self.path, body)
        else:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        key = h.get("x-api-key") or h.get("x-goog-api-key") or (h.get("authorization") or "").removeprefix("Bearer ")
        with open(sys.argv[2], "a") as log:
            log.write(json.dumps({"agent": agent, "path": self.path, "key": key, "tool_output": output}) + "\n")
        self.reply(ctype, data)

    def reply(self, ctype, data):
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
