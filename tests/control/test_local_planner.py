"""The local language-model planner (helpers.control.planner.LocalPlanner) on a tiny causal LM built here:
its chat template, greedy decoding, the token cap and the error feedback; nothing is downloaded."""

import pytest
import torch

from helpers.control import controlgpt, planner
from helpers.core.errors import UsageError

PROMPT = "a red dog to the left of a blue cup"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer():
    """A byte-level BPE tokenizer (every text round-trips) trained in milliseconds on the planner's words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    corpus = [planner.SYSTEM_PROMPT, PROMPT, planner.RuleBasedPlanner()(PROMPT), "Your code failed: Write it again."]
    tok.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>")
    wrapped.chat_template = TEMPLATE
    return wrapped


def _model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


class Recorder:
    """Notes what the model is given and gives back, around its real ``generate``."""

    def __init__(self, model):
        self.inputs, self.outputs, self.real = [], [], model.generate
        model.generate = self

    def __call__(self, **kwargs):
        out = self.real(**kwargs)
        self.inputs.append(kwargs["input_ids"][0])
        self.outputs.append(out[0, kwargs["input_ids"].shape[1] :])
        return out


def test_the_messages_are_the_system_prompt_the_prompt_and_the_readers_error():
    first = planner.chat_messages(PROMPT)
    assert first == [{"role": "system", "content": planner.SYSTEM_PROMPT}, {"role": "user", "content": PROMPT}]
    again = planner.chat_messages(PROMPT, "line 2: unknown colour")
    assert again[:2] == first and again[2]["content"] == "Your code failed: line 2: unknown colour. Write it again."


def test_the_model_reads_its_chat_template_decodes_greedily_and_stops_at_the_token_cap(tokenizer):
    model = _model(tokenizer)
    recorder = Recorder(model)
    local = planner.LocalPlanner(loaded=(model, tokenizer), max_new_tokens=12)
    answers = [local(PROMPT), local(PROMPT), local(PROMPT, "line 2: unknown colour")]
    assert answers[0] == answers[1]  # greedy: the same answer to the same messages
    want = tokenizer.apply_chat_template(planner.chat_messages(PROMPT), add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(recorder.inputs[0]) == want and want.endswith("<|assistant|>")
    assert "Your code failed: line 2: unknown colour. Write it again." in tokenizer.decode(recorder.inputs[2])
    assert all(len(out) <= 12 for out in recorder.outputs)
    assert answers[0] == planner.extract_code(tokenizer.decode(recorder.outputs[0], skip_special_tokens=True))


def test_a_model_that_learnt_one_layout_writes_it_and_plan_accepts_it_first_time(tokenizer):
    """A tiny LM taught one answer (the rule-based planner's code for the prompt) gives it back through the
    chat template and greedy decoding, and the TikZ reader accepts it: the whole local path, end to end."""
    model = _model(tokenizer).train()
    messages = planner.chat_messages(PROMPT)
    context = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    target = tokenizer(planner.RuleBasedPlanner()(PROMPT) + "<|end|>")["input_ids"]
    ids = torch.tensor([context + target])
    labels = ids.clone()
    labels[0, : len(context)] = -100  # learn the answer, not the question
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    local = planner.LocalPlanner(loaded=(model.eval(), tokenizer), max_new_tokens=len(target) + 8)
    accepted = planner.plan(local, PROMPT)
    assert accepted.attempts == 1 and accepted.code == planner.RuleBasedPlanner()(PROMPT)
    assert planner.follows_prompt(accepted.drawing, PROMPT)


def test_an_untrained_model_gets_the_readers_errors_back_and_plan_gives_up_in_one_line(tokenizer):
    model = _model(tokenizer)
    recorder = Recorder(model)
    with pytest.raises(UsageError, match="no readable TikZ .* after 3 attempts") as err:
        planner.plan(planner.LocalPlanner(loaded=(model, tokenizer), max_new_tokens=8), PROMPT)
    assert "\n" not in str(err.value) and len(recorder.inputs) == 3
    assert "Your code failed:" in tokenizer.decode(recorder.inputs[1])


def test_a_model_without_a_chat_template_and_a_bad_cap_are_one_line(tokenizer):
    bare = _tokenizer()
    bare.chat_template = None
    with pytest.raises(UsageError, match="has no chat template: use an instruction-tuned model"):
        planner.LocalPlanner(loaded=(_model(tokenizer), bare))
    with pytest.raises(UsageError, match="max_new_tokens must be a positive number"):
        planner.LocalPlanner(loaded=(_model(tokenizer), tokenizer), max_new_tokens=0)


def test_offline_the_local_model_is_one_line_and_the_toy_course_keeps_the_rule_based_planner(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError) as err:
        controlgpt.make_planner("local")
    assert planner.LOCAL_MODEL in str(err.value) and "\n" not in str(err.value)
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert isinstance(controlgpt.make_planner(None), planner.RuleBasedPlanner)  # no GPU and no hub here
    with pytest.raises(UsageError, match="must be rules, local or chat"):
        controlgpt.make_planner("gpt")
