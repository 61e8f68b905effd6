"""A stand-in for the model APIs of Claude Code, Codex CLI and Gemini CLI.

Run inside a Warden session on its loopback (scripts/agents-e2e): the agent under test
is pointed at it. When the agent offers the session gateway's `everything__echo` tool
(an MCP tool, under whatever prefix the agent gives it), the stand-in first calls it
with `via-gateway-AGENT`; then it asks for one shell command (`echo made-by-AGENT >
AGENT.txt && cat AGENT.txt`) through the agent's own shell tool, and answers "done" once
that result comes back. Each request is logged to LOG as one JSON line: the agent, the
API key the agent sent (to check that it is the session's placeholder, never the real
key), and the tool output when there is one.

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


MCP_TOOL = "everything__echo"


def mcp_tool(names):
    """The agent's name for the gateway's echo tool, if it offers it."""
    return next((n for n in names if n and n.endswith(MCP_TOOL)), None)


def plan(agent, names, done):
    """("mcp", name) / ("shell", None) / ("done", None): the next step, after `done`
    tool results in the conversation."""
    mcp = mcp_tool(names)
    steps = ([("mcp", mcp)] if mcp else []) + [("shell", None)]
    return steps[done] if done < len(steps) else ("done", None)


def sse(events):
    out = ""
    for name, data in events:
        if name:
            out += f"event: {name}\n"
        out += f"data: {json.dumps(data)}\n\n"
    return out.encode()


def anthropic(body):
    """Claude Code: Messages API, streamed."""
    def tool_results(m):
        c = m.get("content")
        return [b for b in c if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(c, list) else []
    messages = body.get("messages") or [{}]
    results = tool_results(messages[-1])
    done = sum(len(tool_results(m)) for m in messages)
    tools = [t.get("name") for t in body.get("tools", [])]
    step, name = plan("claude", tools, done) if "Bash" in tools else ("done", None)
    if step == "mcp":
        block = {"type": "tool_use", "id": f"toolu_standin{done}", "name": name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps({"message": "via-gateway-claude"})}
        stop = "tool_use"
    elif step == "shell":
        block = {"type": "tool_use", "id": f"toolu_standin{done}", "name": "Bash", "input": {}}
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
    offered = list(names)
    if names.get("exec") == "custom" and "mcp__warden" in json.dumps(items):
        # A deferred MCP namespace: its tools are called from `exec`'s JavaScript.
        offered.append("mcp__warden__" + MCP_TOOL)
    step, mcp = plan("codex", offered, len(results)) if names else ("done", None)
    last = items[-1] if items else {}
    results = [last] if last.get("type") in ("function_call_output", "custom_tool_call_output") else []
    if step == "done":
        item = {"type": "message", "id": "msg_standin", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "done", "annotations": []}]}
    elif step == "mcp" and names.get("exec") == "custom":
        js = f"const r = await tools.{mcp}({{message: 'via-gateway-codex'}}); text(JSON.stringify(r));"
        item = {"type": "custom_tool_call", "id": f"ctc_standin{len(items)}", "call_id": f"call_standin{len(items)}", "name": "exec", "input": js, "status": "completed"}
    elif step == "mcp":
        item = {"type": "function_call", "id": f"fc_standin{len(items)}", "call_id": f"call_standin{len(items)}", "name": mcp,
                "arguments": json.dumps({"message": "via-gateway-codex"}), "status": "completed"}
    elif names.get("exec") == "custom":
        js = f"const r = await tools.exec_command({{cmd: {json.dumps(cmd)}}}); text(r);"
        item = {"type": "custom_tool_call", "id": f"ctc_standin{len(items)}", "call_id": f"call_standin{len(items)}", "name": "exec", "input": js, "status": "completed"}
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
    def responses(c):
        return [p["functionResponse"] for p in c.get("parts", []) if "functionResponse" in p]
    contents = body.get("contents") or [{}]
    results = responses(contents[-1])
    done = sum(len(responses(c)) for c in contents)
    names = [f.get("name") for t in body.get("tools", []) for f in t.get("functionDeclarations", [])]
    step, mcp = plan("gemini", names, done) if "run_shell_command" in names else ("done", None)
    if "responseJsonSchema" in json.dumps(body.get("generationConfig", {})):
        part = {"text": json.dumps({"complexity_reasoning": "one command", "complexity_score": 10})}
    elif "streamGenerateContent" in path and step == "mcp":
        part = {"functionCall": {"name": mcp, "args": {"message": "via-gateway-gemini"}}}
    elif "streamGenerateContent" in path and step == "shell":
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
