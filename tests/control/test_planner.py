"""Layout planners: the rule-based stand-in, the chat client against a local fake endpoint, retries."""

import json
import signal
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from helpers.control import planner, tikz
from helpers.core.errors import UsageError


@pytest.mark.parametrize(
    "prompt, relation",
    [
        ("a red dog to the left of a blue cup", "left"),
        ("a red dog to the right of a blue cup", "right"),
        ("A red dog above a blue cup", "above"),
        ("a red dog below a blue cup", "below"),
    ],
)
def test_rule_based_layout_follows_the_relation(prompt, relation):
    first, rel, second = planner.parse_relation_prompt(prompt)
    assert (first, rel, second) == (planner.Thing("dog", "red"), relation, planner.Thing("cup", "blue"))
    result = planner.plan(planner.RuleBasedPlanner(), prompt)
    (name1, (x1, y1)), (name2, (x2, y2)) = result.drawing.labels
    assert (name1, name2) == ("dog", "cup") and result.attempts == 1
    assert {"left": x1 < x2, "right": x1 > x2, "above": y1 > y2, "below": y1 < y2}[relation]
    assert planner.follows_prompt(result.drawing, prompt)
    words = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
    opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}[relation]
    assert not planner.follows_prompt(result.drawing, prompt.replace(words[relation], words[opposite]))
    assert not planner.follows_prompt(result.drawing, prompt.replace("blue cup", "blue house"))
    sketch = np.asarray(tikz.render(result.drawing, size=64, labels="none"))
    px = lambda x, y: tuple(sketch[round((1 - y / 10) * 64), round(x / 10 * 64)])  # noqa: E731
    assert px(x1, y1) == tikz.COLOURS["red"] and px(x2, y2) == tikz.COLOURS["blue"]


def test_prompts_without_a_relation_or_a_class_are_one_line_errors():
    with pytest.raises(UsageError, match="no spatial relation"):
        planner.parse_relation_prompt("a red dog and a blue cup")
    with pytest.raises(UsageError, match="no object class in 'a red thing'"):
        planner.parse_relation_prompt("a red thing to the left of a cup")


def test_plan_feeds_the_readers_error_back_and_gives_up_with_the_last_one():
    seen = []

    def flaky(prompt, feedback=None):
        seen.append(feedback)
        return (
            "\\begin{tikzpicture}\n\\circle;\n\\end{tikzpicture}"
            if len(seen) == 1
            else planner.RuleBasedPlanner()(prompt)
        )

    result = planner.plan(flaky, "a dog above a car")
    assert result.attempts == 2 and seen[0] is None and seen[1] == result.errors[0]
    assert result.errors[0].startswith("line 2: unsupported command '\\circle'")
    with pytest.raises(UsageError, match="after 2 attempts; last error: line 1"):
        planner.plan(lambda p, f=None: "no code", "a dog above a car", max_attempts=2)


def _handler(respond):
    """A request handler class that records each request as (method, path, Authorization, JSON body)
    and answers with ``respond(handler, body)``."""

    class Handler(BaseHTTPRequestHandler):
        seen: list = []

        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            Handler.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
            respond(self, body)

        do_GET = do_POST = _any  # noqa: N815 (http.server's names)

        def log_message(self, *args):
            pass

    return Handler


@contextmanager
def _serve(handler):
    """``handler`` on a local port, in a thread, for the length of the block: its base URL."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _send(handler, status: int, data: bytes = b"", **headers) -> None:
    handler.send_response(status)
    for name, value in ({"Content-Length": str(len(data))} | headers).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _chat_answer(handler, body) -> None:
    """An OpenAI-compatible chat completion: the rule-based layout in a Markdown fence."""
    code = planner.RuleBasedPlanner()(body["messages"][1]["content"])
    answer = {"choices": [{"message": {"content": f"Here you go:\n```latex\n{code}\n```"}}]}
    _send(handler, 200, json.dumps(answer).encode())


def test_chat_planner_speaks_the_openai_chat_api():
    chat_server = _handler(_chat_answer)
    with _serve(chat_server) as url:
        chat = planner.ChatPlanner(f"{url}/v1", "sk-test", "some-model")
        code = chat("a green tree to the right of a house", feedback="line 3: unsupported option 'dashed'")
        short = planner.ChatPlanner(f"{url}/v1", "sk-test", "some-model", max_tokens=300)
        short("a dog above a car")
    (method, path, auth, body), (*_, short_body) = chat_server.seen
    assert method == "POST" and path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "some-model" and body["messages"][0]["content"] == planner.SYSTEM_PROMPT
    assert "line 3: unsupported option 'dashed'" in body["messages"][2]["content"]
    assert body["max_tokens"] == planner.MAX_TOKENS == 1024 and short_body["max_tokens"] == 300
    assert code.startswith("\\begin{tikzpicture}") and code.endswith("\\end{tikzpicture}")
    assert [name for name, _ in tikz.parse(code).labels] == ["tree", "house"]
    with pytest.raises(UsageError, match="max_tokens must be a positive number of tokens"):
        planner.ChatPlanner(f"{url}/v1", "sk-test", "some-model", max_tokens=0)


@pytest.mark.parametrize("status", [301, 302, 303, 307])
def test_a_redirect_is_one_line_and_the_key_never_reaches_the_other_host(status):
    elsewhere = _handler(_chat_answer)
    with _serve(elsewhere) as other:
        redirect = _handler(lambda h, body: _send(h, status, Location=f"{other}/v1/chat/completions"))
        with _serve(redirect) as url, pytest.raises(UsageError) as err:
            planner.ChatPlanner(f"{url}/v1", "sk-secret", "some-model")("a dog above a car")
    assert len(redirect.seen) == 1 and redirect.seen[0][2] == "Bearer sk-secret"
    assert elsewhere.seen == []  # no request at all, so no Authorization header either
    assert str(err.value) == (
        f"the chat planner's endpoint {url}/v1/chat/completions redirected (HTTP {status}) to "
        f"{other}/v1/chat/completions: set CONTROLGPT_BASE_URL to the final URL; the key was not sent there"
    )


@pytest.mark.parametrize(
    "base_url, message",
    [
        ("http://api.example.com/v1", "is plain http to api.example.com: .* use https://api.example.com/v1 "),
        ("http://10.0.0.5:8000/v1", "is plain http to 10.0.0.5: .* use https://10.0.0.5:8000/v1 "),
        ("ftp://api.example.com/v1", "must be an https:// URL .* not 'ftp://api.example.com/v1'"),
        ("api.example.com/v1", "must be an https:// URL .* set CONTROLGPT_BASE_URL"),
    ],
)
def test_an_endpoint_the_key_would_reach_unencrypted_is_refused_before_any_request(base_url, message, monkeypatch):
    def no_network(*args, **kw):
        raise AssertionError("the planner opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("CONTROLGPT_BASE_URL", base_url)
    monkeypatch.setenv("CONTROLGPT_MODEL", "some-model")
    with pytest.raises(UsageError, match=message) as err:
        planner.ChatPlanner(api_key="sk-secret")("a dog above a car")
    assert "\n" not in str(err.value) and "sk-secret" not in str(err.value)
    for allowed in ("https://api.openai.com/v1", "http://localhost:8080/v1", "http://127.0.0.1:1/v1", "http://[::1]:1"):
        planner.ChatPlanner(allowed, "sk-secret", "some-model")  # constructed: nothing sent yet


def _huge(handler, body, declared: bool) -> None:
    """A valid chat completion padded to 3 MiB, with or without a Content-Length header."""
    code = planner.RuleBasedPlanner()(body["messages"][1]["content"])
    head, tail = json.dumps({"choices": [{"message": {"content": code + "@"}}]}).encode().split(b"@")
    padding = 3 * 2**20
    handler.send_response(200)
    if declared:
        handler.send_header("Content-Length", str(len(head) + padding + len(tail)))
    handler.end_headers()
    try:
        handler.wfile.write(head)
        for _ in range(padding // 2**16):
            handler.wfile.write(b" " * 2**16)
        handler.wfile.write(tail)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client stopped reading: what it should do


@pytest.mark.parametrize("declared", [True, False], ids=["with Content-Length", "streamed"])
def test_an_answer_over_a_megabyte_is_refused_in_one_line(declared):
    with _serve(_handler(lambda h, body: _huge(h, body, declared))) as url:
        chat = planner.ChatPlanner(f"{url}/v1", "sk-test", "some-model")
        with pytest.raises(UsageError, match=r"answered more than 1024 KiB, where a layout is a few KiB") as err:
            chat("a dog above a car")
    assert "\n" not in str(err.value)


def test_an_error_status_is_one_line_with_the_endpoints_reason():
    refusal = json.dumps({"error": {"message": "Incorrect API key provided"}}).encode()
    with _serve(_handler(lambda h, body: _send(h, 401, refusal))) as url:
        with pytest.raises(UsageError, match=r"answered HTTP 401: .*Incorrect API key provided"):
            planner.ChatPlanner(f"{url}/v1", "sk-wrong", "some-model")("a dog above a car")


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="needs SIGALRM to stop a runaway search")
def test_extract_code_is_linear_and_finds_what_it_found_before():
    junk = "\\begin{tikzpicture}" * (2**20 // 19)  # a MiB of beginnings without an end: minutes before

    def stop(*_):
        raise TimeoutError("extract_code still searching after 5 s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(5)
    try:
        assert planner.extract_code(junk + " ") == junk
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    begin, end = "\\begin{tikzpicture}", "\\end{tikzpicture}"
    cases = {
        f"```latex\n{begin}\nA\n{end}\n```": f"{begin}\nA\n{end}",
        f"{end} prose {begin}A{end} and {begin}B{end}": f"{begin}A{end}",
        f"{begin}{begin}A{end}{end}": f"{begin}{begin}A{end}",
        f"  {begin} unfinished ": f"{begin} unfinished",
        "  no code at all\n": "no code at all",
    }
    for answer, code in cases.items():
        assert planner.extract_code(answer) == code, answer


def test_chat_planner_without_configuration_says_what_to_set(monkeypatch):
    monkeypatch.delenv("CONTROLGPT_BASE_URL", raising=False)
    monkeypatch.delenv("CONTROLGPT_MODEL", raising=False)
    with pytest.raises(UsageError, match="CONTROLGPT_BASE_URL"):
        planner.ChatPlanner()


def test_class_boxes_are_the_measured_proportions_of_toy_objects():
    from helpers.toy import relations

    measured = relations.typical_box_sizes(400)
    for cls, (w, h) in planner.CLASS_BOXES.items():
        assert abs(measured[cls][0] - w) < 0.25 and abs(measured[cls][1] - h) < 0.25, (cls, measured[cls])
