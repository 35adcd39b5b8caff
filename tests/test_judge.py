"""The judge reads its scores the best way each backend allows: teacher-forced digit
probabilities in process (checked against a plain forward pass), the digit alternatives of a
server's logprobs, or the text of any server; every candidate gets scores or a reason."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_candidate

from scoder.config import ScoreConfig
from scoder.judge import DIGITS, _expected_from_logprobs, judge
from scoder.models import OpenAIBackend, TransformersBackend, resolve_model
from scoder.models.base import Completion, TokenLogprob
from scoder.models.choices import choice_probabilities
from scoder.templates import JUDGE_TEMPLATES


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu", batch_size=3)


def test_forced_choices_equal_a_plain_forward_pass_of_the_whole_text(backend):
    """The KV-cached, batched (left-padded) steps give the probabilities one full forward pass of
    prompt + forced text gives, for prompts of different lengths."""
    tok, model = backend.tokenizer, backend.model
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("def f", "x = 1\n# a", "y")]
    steps = [(' "a": ', ["1", "2", "3"]), (', "b": ', ["1", "2", "3"])]
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) == 1 for c in steps[0][1])
    got = choice_probabilities(model, tok, prompts, steps, batch_size=2)
    for prompt, per_step in zip(prompts, got):
        text_ids = list(prompt)
        for (text, choices), dist in zip(steps, per_step):
            text_ids += tok(text, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([text_ids])).logits[0, -1]
            ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in choices]
            want = torch.softmax(logits[ids].float(), dim=-1).tolist()
            assert [dist[c] for c in choices] == pytest.approx(want, abs=1e-5)
            text_ids.append(ids[max(range(len(choices)), key=lambda i: want[i])])


def test_forced_choices_compute_the_vocabulary_only_at_the_last_position(backend):
    """The output layer sees one position per row and step, not the whole prompt: for a 152k
    vocabulary the whole prompt's logits were most of the demo's peak memory."""
    tok, model = backend.tokenizer, backend.model
    prompts = [tok("def f(x):\n    return x" * 4, add_special_tokens=False)["input_ids"]] * 2
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: seen.append(tuple(args[0].shape))
    )
    try:
        choice_probabilities(model, tok, prompts, [(' "a": ', ["1", "2"])], batch_size=2)
    finally:
        hook.remove()
    assert seen == [(2, 1, model.config.hidden_size)]


def candidates(n=3):
    return [
        make_candidate(id=f"c{i}", seed_id=f"s{i}", problem=f"Add {i}.", solution="x = 1")
        for i in range(n)
    ]


def test_in_process_judge_scores_every_candidate_with_expected_values(backend):
    cfg = ScoreConfig()
    names = [a.name for a in cfg.aspects]
    judged = judge(candidates(), backend, cfg)
    for j in judged:
        assert j.method == "choices" and j.reason is None and set(j.scores) == set(names)
        assert all(0 <= v <= 9 for v in j.expected.values())
        assert all(isinstance(v, int) for v in j.scores.values())
        assert j.values == j.expected
    # integers only, when asked
    ints = judge(candidates(1), backend, ScoreConfig(scoring="integers"))[0]
    assert ints.expected is None and ints.values == {k: float(v) for k, v in ints.scores.items()}


def test_expected_scores_from_a_servers_logprobs():
    names = ["consistency", "clarity"]
    text_tokens = ['{"', "consistency", '":', " ", "8", ', "', "clarity", '":', " ", "3", "}"]
    top8 = (("8", math.log(0.6)), ("7", math.log(0.3)), ("x", math.log(0.1)))
    top3 = (("3", math.log(0.5)), ("4", math.log(0.5)))
    tokens = tuple(
        TokenLogprob(t, 0.0, top8 if t == "8" else top3 if t == "3" else ()) for t in text_tokens
    )
    completion = Completion("".join(text_tokens), 10, 11, "stop", tokens)
    expected = _expected_from_logprobs(completion, names)
    assert expected == {"consistency": pytest.approx((8 * 0.6 + 7 * 0.3) / 0.9, abs=1e-4),
                        "clarity": 3.5}  # fmt: skip
    # a digit that shares its token with other text gives no expectation: the integers stand
    merged = tuple(TokenLogprob(t, 0.0, top8) for t in ['{"consistency": 8', ', "clarity": 3}'])
    assert _expected_from_logprobs(Completion("", 1, 2, "stop", merged), names) is None


def test_the_judge_prompt_needs_no_prefill_and_shows_no_example_scores():
    chat = JUDGE_TEMPLATES["judge-v2"].chat([("a", "x"), ("b", "y")], "p", "s", "t", "seed")
    assert [m["role"] for m in chat] == ["system", "user"]
    assert '{"a": <0-9>, "b": <0-9>}' in chat[-1]["content"]
    assert [str(d) for d in range(10)] == DIGITS


def test_a_server_that_only_returns_text_is_read_as_text_and_retried_once(transformers_server):
    """`transformers serve` returns neither logprobs nor schema-bound output: the judge reads the
    text; a random model never writes the JSON, so each candidate is retried once (sampled) and
    then recorded unscored with the reason, its two raw answers kept."""
    url, model = transformers_server
    backend = OpenAIBackend(base_url=url, model=model)
    judged = judge(candidates(), backend, ScoreConfig(max_new_tokens=8))
    for j in judged:
        assert j.scores is None and j.attempts == 2 and len(j.raw) == 2 and j.method is None
        assert j.reason.split(":")[0] in {"malformed_json", "missing_aspects", "non_integer",
                                          "out_of_range"}  # fmt: skip
