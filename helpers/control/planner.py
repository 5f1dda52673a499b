"""Layout planners for ControlGPT: a prompt in, TikZ code of the scene's layout out.

ControlGPT (Zhang et al., 2023) asks GPT-4 to "draw" the prompt as TikZ, then renders that code
into the sketch a ControlNet follows. Three planners share one interface here:

- `LocalPlanner`: an open instruction-tuned language model run on the learner's own GPU by
  transformers (``LOCAL_MODEL``, Qwen2.5-1.5B-Instruct, by default), through its chat template with
  greedy decoding: no API key, fetched from the hub once.
- `ChatPlanner`: any OpenAI-compatible chat endpoint (``CONTROLGPT_BASE_URL``,
  ``CONTROLGPT_API_KEY``, ``CONTROLGPT_MODEL``), with a prompt in the paper's style. Never needed
  for CI or the toy course.
- `RuleBasedPlanner`: a deterministic, offline **rule-based stand-in, not an LLM**: it parses the
  prompt's two objects and their spatial relation and writes the same kind of TikZ.

`plan` validates the code with `helpers.control.tikz` and, as the paper does, sends the reader's error
back to the planner for another try.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

import httpx

from helpers.control import tikz
from helpers.core.errors import UsageError
from helpers.toy import world as toyworld
from helpers.toy.relations import CENTRES, RELATIONS

# Width and height (canvas units, 10 x 10) of each class's box in a two-object toy scene: the
# proportions an LLM knows from the world (a tree is taller than wide, sunglasses are flat), here
# the medians of 800 toy renders (`relations.typical_box_sizes`, checked by a test).
CLASS_BOXES = {
    "dog": (3.6, 2.5),
    "cat": (2.8, 2.7),
    "sunglasses": (3.8, 1.4),
    "cup": (3.0, 2.7),
    "house": (3.3, 3.1),
    "tree": (3.1, 3.4),
    "car": (3.8, 2.3),
    "flower": (2.5, 3.8),
}
BEGIN, END = "\\begin{tikzpicture}", "\\end{tikzpicture}"
SYSTEM_PROMPT = (
    """You draw layouts of images as TikZ code on a 10 x 10 canvas (x to the right, y up).
Draw each object the prompt names as a rectangle where it should appear, filled with its colour,
and put a \\node at the rectangle's centre whose text is the object's name. Use only \\draw,
\\fill, \\filldraw and \\node ... at (x,y) {name}; colours: """
    + ", ".join(tikz.COLOURS)
    + """.
Answer with the code alone, from \\begin{tikzpicture} to \\end{tikzpicture}."""
)


@dataclass(frozen=True)
class Thing:
    """One object of a prompt: its class noun and, if named, its colour."""

    cls: str
    colour: str | None = None

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.cls}" if self.colour else self.cls


def parse_relation_prompt(prompt: str) -> tuple[Thing, str, Thing]:
    """ "a red dog to the left of a blue cup" -> (Thing(dog, red), "left", Thing(cup, blue))."""
    text = " ".join(prompt.lower().replace(",", " ").split())
    for phrase, relation in RELATIONS.items():
        if f" {phrase} " in f" {text} ":
            first, second = text.split(phrase, 1)
            return _thing(first, prompt), relation, _thing(second, prompt)
    raise UsageError(
        f"no spatial relation in {prompt!r}: say 'A to the left of B', 'to the right of', 'above' or 'below'"
    )


def _thing(words: str, prompt: str) -> Thing:
    found = toyworld.parse_prompt(words)
    if found["class"] is None:
        raise UsageError(
            f"no object class in {words.strip()!r} of {prompt!r}: name one of {', '.join(toyworld.CLASSES)}"
        )
    return Thing(found["class"], found["colour"])


def chat_messages(prompt: str, feedback: str | None = None) -> list[dict[str, str]]:
    """What every language-model planner is sent: the system prompt, the prompt, and the reader's error on the
    previous answer, if any, with a request to write the code again (the paper's feedback loop)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    if feedback:
        messages.append({"role": "user", "content": f"Your code failed: {feedback}. Write it again."})
    return messages


class Planner(Protocol):
    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        """TikZ code for ``prompt``; ``feedback`` is the reader's error on the previous answer."""


class RuleBasedPlanner:
    """A deterministic stand-in for the LLM (not one): two objects, four relations, one box per
    object at the relation's place, with its class's usual proportions."""

    name = "rule-based (not an LLM)"

    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        first, relation, second = parse_relation_prompt(prompt)
        lines = ["\\begin{tikzpicture}", f"% {prompt}"]
        for thing, (x, y) in zip((first, second), CENTRES[relation]):
            (w, h), cx, cy = CLASS_BOXES[thing.cls], x * tikz.CANVAS, (1 - y) * tikz.CANVAS  # TikZ's y points up
            x0, y0, x1, y1 = (round(v, 2) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            fill = thing.colour or "gray"
            lines.append(f"\\draw[fill={fill}] ({x0},{y0}) rectangle ({x1},{y1});")
            lines.append(f"\\node at ({round(cx, 2)},{round(cy, 2)}) {{{thing.cls}}};")
        lines.append("\\end{tikzpicture}")
        return "\n".join(lines)


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # where plain http is allowed: the key never leaves the machine
MAX_TOKENS = 1024  # a layout of a few boxes is about 200 tokens; room for a verbose model, not for an essay
MAX_ANSWER_BYTES = 1 << 20  # an answer is a few KiB of JSON: a MiB is a wrong endpoint (or a hostile one)


def check_endpoint(base_url: str) -> None:
    """Refuse, before any request, an endpoint the key would reach unencrypted: https, or plain http
    to this machine only (a local server such as llama.cpp's or vLLM's)."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        scheme, host = parts.scheme, parts.hostname or ""
    except ValueError:  # such as an unclosed [ of an IPv6 address
        scheme, host = "", ""
    if host and (scheme == "https" or scheme == "http" and host in LOCAL_HOSTS):
        return
    if host and scheme == "http":
        raise UsageError(
            f"the chat planner's endpoint {base_url} is plain http to {host}: the API key would cross the network "
            f"unencrypted; use https://{parts.netloc}{parts.path} (plain http is only for localhost, 127.0.0.1 and ::1)"
        )
    raise UsageError(
        f"the chat planner's endpoint must be an https:// URL such as https://api.openai.com/v1 "
        f"(or http://localhost:PORT/v1 for a local server), not {base_url!r}: set CONTROLGPT_BASE_URL"
    )


class ChatPlanner:
    """An OpenAI-compatible chat endpoint as the planner, in the paper's manner.

    The request goes to the endpoint it names and nowhere else: redirects are not followed (a
    client that follows one sends the ``Authorization`` header to the new host), plain http is
    refused except on this machine, the answer is capped at ``max_tokens`` tokens and
    ``max_answer_bytes`` bytes.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = MAX_TOKENS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.base_url = (base_url or os.environ.get("CONTROLGPT_BASE_URL", "")).rstrip("/")
        self.api_key = api_key or os.environ.get("CONTROLGPT_API_KEY", "")
        self.model = model or os.environ.get("CONTROLGPT_MODEL", "")
        self.timeout, self.max_tokens, self.max_answer_bytes = timeout, max_tokens, max_answer_bytes
        if not self.base_url or not self.model:
            raise UsageError(
                "the chat planner needs CONTROLGPT_BASE_URL (for example https://api.openai.com/v1) "
                "and CONTROLGPT_MODEL set; use the rule-based planner offline"
            )
        check_endpoint(self.base_url)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise UsageError(f"max_tokens must be a positive number of tokens (got {max_tokens!r}); 1024 is plenty")
        self.local = urllib.parse.urlsplit(self.base_url).hostname in LOCAL_HOSTS
        self.name = f"chat: {self.model}"

    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        messages = chat_messages(prompt, feedback)
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        data = self._post(body)
        try:
            answer = json.loads(data)["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise UsageError(
                f"the chat planner at {self.base_url} gave no chat completion ({type(err).__name__}: {err}): "
                f"check that CONTROLGPT_BASE_URL is an OpenAI-compatible /v1 endpoint"
            ) from None
        if not isinstance(answer, str):
            raise UsageError(f"the chat planner at {self.base_url} answered no text (content: {answer!r:.80})")
        return extract_code(answer)

    def _post(self, body: dict) -> bytes:
        """POST ``body`` to the endpoint and read the answer, up to ``max_answer_bytes``; every failure
        is one line. A local endpoint is reached directly, never through a proxy from the environment."""
        url = f"{self.base_url}/chat/completions"
        headers = {"Accept-Encoding": "identity"}  # uncompressed: no small body that unpacks into a huge one
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=not self.local) as client:
                with client.stream("POST", url, json=body, headers=headers) as response:
                    if 300 <= response.status_code < 400:
                        raise UsageError(
                            f"the chat planner's endpoint {url} redirected (HTTP {response.status_code}) to "
                            f"{response.headers.get('location', 'nowhere')}: set CONTROLGPT_BASE_URL to the final "
                            f"URL; the key was not sent there"
                        )
                    data = self._read(response)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as err:
            raise UsageError(f"the chat planner at {self.base_url} failed: {type(err).__name__}: {err}") from None
        if response.status_code >= 400:
            detail = " ".join(data[:300].decode("utf-8", "replace").split())
            raise UsageError(f"the chat planner at {self.base_url} answered HTTP {response.status_code}: {detail}")
        return data

    def _read(self, response: httpx.Response) -> bytes:
        """The body, streamed, refused in one line once it passes ``max_answer_bytes``."""
        too_big = UsageError(
            f"the chat planner at {self.base_url} answered more than {self.max_answer_bytes // 1024} KiB, where a "
            f"layout is a few KiB: check that CONTROLGPT_BASE_URL is a chat completions endpoint"
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_answer_bytes:
            raise too_big
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_answer_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)


# Qwen2.5-1.5B-Instruct: Apache-2.0 and ungated (no hub token on Colab), a chat template, trained on code as
# well as text, and 3.1 GB in fp16, which a 15 GB T4 holds beside SD 1.5 and its ControlNet (the family's 3 B
# model comes under a research-only licence).
LOCAL_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


class LocalPlanner:
    """An instruction-tuned causal language model as the planner, run here by transformers: the chat template
    of the model, greedy decoding (the same layout for the same prompt, as the chat planner's temperature 0),
    at most ``max_new_tokens`` tokens, the same system prompt and error feedback as `ChatPlanner`.

    ``model`` is a hub id or a local folder; a loaded ``(model, tokenizer)`` pair may be passed instead."""

    def __init__(
        self,
        model: str = LOCAL_MODEL,
        device: str | None = None,
        max_new_tokens: int = MAX_TOKENS,
        loaded: tuple | None = None,
    ) -> None:
        import torch

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be a positive number of tokens (got {max_new_tokens!r})")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = loaded or _load_causal_lm(model, self.device)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise UsageError(f"{model} has no chat template: use an instruction-tuned model, e.g. {LOCAL_MODEL}")
        self.max_new_tokens = max_new_tokens
        self.name = f"local: {model if loaded is None else type(self.model).__name__}"

    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(
            chat_messages(prompt, feedback), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **ids,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        answer = self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        return extract_code(answer)


def _load_causal_lm(model: str, device: str) -> tuple:
    """The model (fp16 on a GPU, fp32 on a CPU) and its tokenizer; a failed load is one line."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.diffusion.loading import loading

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with loading(model):
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    return lm, tokenizer


def extract_code(answer: str) -> str:
    """The tikzpicture of a chat answer, with any Markdown fence or prose around it dropped.

    Two ``str.find`` calls, not a regex: searching ``begin.*?end`` restarts at every ``begin`` that has
    no ``end`` after it, quadratic on an answer of repeated ``\\begin{tikzpicture}``. The first begin
    and the first end after it are the span that search found."""
    begin = answer.find(BEGIN)
    end = answer.find(END, begin + len(BEGIN)) if begin >= 0 else -1
    return answer[begin : end + len(END)] if end >= 0 else answer.strip()


@dataclass
class Plan:
    """A planner's accepted answer: the code, the drawing read from it, and the attempts it took."""

    code: str
    drawing: tikz.Drawing
    attempts: int
    errors: list[str]


def follows_prompt(drawing: tikz.Drawing, prompt: str) -> bool:
    """Whether a layout names the prompt's two objects, in order, placed as its relation says (on the
    TikZ canvas y points up): what a planner, rule-based or an LLM, must get right before any drawing."""
    first, relation, second = parse_relation_prompt(prompt)
    if [name for name, _ in drawing.labels[:2]] != [first.cls, second.cls]:
        return False
    (_, (x1, y1)), (_, (x2, y2)) = drawing.labels[:2]
    return {"left": x1 < x2, "right": x1 > x2, "above": y1 > y2, "below": y1 < y2}[relation]


def plan(planner: Planner, prompt: str, max_attempts: int = 3) -> Plan:
    """Ask ``planner`` for TikZ until `helpers.control.tikz` reads it, feeding each error back."""
    errors: list[str] = []
    for attempt in range(1, max_attempts + 1):
        code = planner(prompt, errors[-1] if errors else None)
        try:
            return Plan(code, tikz.parse(code), attempt, errors)
        except tikz.TikzError as err:
            errors.append(str(err))
    raise UsageError(f"no readable TikZ for {prompt!r} after {max_attempts} attempts; last error: {errors[-1]}")
