"""Layout planners: the rule-based stand-in, the chat client against a local fake endpoint, retries."""

import json
import threading
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


class _FakeChat(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.requests.append((self.path, self.headers.get("Authorization"), body))
        code = planner.RuleBasedPlanner()(body["messages"][1]["content"])
        answer = {"choices": [{"message": {"content": f"Here you go:\n```latex\n{code}\n```"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_chat_planner_speaks_the_openai_chat_api():
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chat = planner.ChatPlanner(f"http://127.0.0.1:{server.server_port}/v1", "sk-test", "some-model")
        code = chat("a green tree to the right of a house", feedback="line 3: unsupported option 'dashed'")
    finally:
        server.shutdown()
    path, auth, body = _FakeChat.requests[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "some-model"
    assert body["messages"][0]["content"] == planner.SYSTEM_PROMPT
    assert "line 3: unsupported option 'dashed'" in body["messages"][2]["content"]
    assert code.startswith("\\begin{tikzpicture}") and code.endswith("\\end{tikzpicture}")
    assert [name for name, _ in tikz.parse(code).labels] == ["tree", "house"]


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
