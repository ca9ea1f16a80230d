"""Fast golden decoding: a static KV cache and a one-token step replayed as a CUDA graph, with our own
greedy/sampling loop that reproduces `generate()`'s semantics token for token.

Why: `generate()` with its dynamic cache runs one small forward per token, launch-bound: a golden-64 dump
of 64 new tokens at batch 8 took ~30 s on an H200 (issue 25). Here the prompt is prefilled eagerly into a
StaticCache sized rows x (longest prompt + max_new_tokens); every later token runs the same fixed-shape
step (the model's forward over one token per row, with a mask and positions held in device tensors and
advanced in place), so on CUDA it is captured once per row count and replayed. On CPU the same step runs
eagerly: that is what the tests compare with `generate()`.

What the loop reproduces (transformers' `_sample` and `_get_logits_processor`): the generation config is
merged as generate merges it (arguments > the model's generation_config > transformers' defaults, top_k=50
among them); logits are processed in generate's order when sampling: temperature, top-k, top-p; tokens are drawn with `torch.multinomial` from the global generator
(the same draws as generate's), or argmax; rows past their eos get the pad token; the loop stops when every
row has ended or after max_new_tokens. Anything else in the merged config (beams, min lengths, bad words,
...) is not reproduced: `auto` then keeps `generate()`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmtrack.model.kernels import sdpa_without_cudnn

DECODE_CHOICES = ("auto", "generate", "static")
WARMUP_STEPS = 2  # eager steps on a side stream before capture (cuBLAS workspaces, lazy inits)
# graphed decoding asks whether every row has ended once per this many tokens, not after each (see decode)
STOP_CHECK_EVERY = 8
_SIDE_STREAMS: dict[int, "torch.cuda.Stream"] = {}


def side_stream() -> "torch.cuda.Stream":
    """The one side stream of this device for every warm-up and capture of the process: cuBLAS keeps a
    workspace for each stream it runs on (~128 MiB on an H200), and a new stream at every dump held that
    much more each time."""
    index = torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream()
    return _SIDE_STREAMS[index]
# generation-config fields the loop does not implement, with their neutral values: any other value means
# generate() would do something the static loop does not
_NEUTRAL = {"num_beams": (1, None), "num_return_sequences": (1, None), "no_repeat_ngram_size": (0, None),
            "bad_words_ids": (None,), "min_length": (0, None), "min_new_tokens": (0, None),
            "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,), "sequence_bias": (None,), "guidance_scale": (None, 1, 1.0),
            "typical_p": (None, 1, 1.0), "min_p": (None,), "top_h": (None,), "epsilon_cutoff": (None, 0, 0.0),
            "eta_cutoff": (None, 0, 0.0), "renormalize_logits": (None, False), "remove_invalid_values": (None, False),
            "exponential_decay_length_penalty": (None,), "watermarking_config": (None,), "stop_strings": (None,),
            "max_time": (None,), "encoder_repetition_penalty": (None, 1, 1.0),
            # how transformers applies it to an inputs_embeds prompt changed between 5.x releases (5.17: over
            # all new tokens; 5.23: past each row's left-pad count), so only generate() reproduces it; the
            # spec's golden settings leave it at 1.0
            "repetition_penalty": (None, 1, 1.0)}


def use_static_decode(setting: str, device: torch.device) -> bool:
    """`auto`: the static loop on CUDA (where generate() is launch-bound), generate() on CPU; `static`
    anywhere (eager on CPU: the tests' path); `generate`: transformers' own loop."""
    if setting not in DECODE_CHOICES:
        raise ValueError(f"eval.golden_decode={setting!r}: use one of {', '.join(DECODE_CHOICES)}")
    return setting == "static" or (setting == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class Sampling:
    """The merged generation settings the static loop implements."""
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int


def sampling_settings(llm, **generate_kwargs) -> Sampling | str:
    """The settings generate() would run with for these arguments, or why the static loop cannot reproduce
    them (a model that is not a decoder-only one of full-attention layers, an unsupported option, a
    transformers without the 5.x StaticCache)."""
    try:
        from transformers.cache_utils import StaticLayer
        config, _ = llm._prepare_generation_config(None, **generate_kwargs)  # generate's own merge
        # 5.x layers count their own fill on the device; 4.x ones needed cache positions from the caller
        counts_itself = isinstance(getattr(StaticLayer(max_cache_len=1), "cumulative_length", None), torch.Tensor)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        return f"this transformers has no 5.x StaticCache or generation-config merge ({type(e).__name__}: {e})"
    if not counts_itself:
        return "this transformers' StaticCache predates 5.x (it needs cache positions)"
    if not type(llm).__module__.startswith("transformers."):  # the step passes masks as transformers' own LMs take them
        return f"{type(llm).__name__} is remote code, not one of transformers' LMs"
    if getattr(llm.config, "is_encoder_decoder", False) or not hasattr(llm, "model") or not hasattr(llm, "lm_head"):
        return f"{type(llm).__name__} is not a decoder-only LM with .model and .lm_head"
    if set(getattr(llm.config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        return "the LM has sliding-window or other non-full attention layers"
    if getattr(llm.config, "_attn_implementation", "sdpa") != "sdpa":  # the step's boolean key mask is SDPA's
        return f"the LM's attention is {llm.config._attn_implementation}, not sdpa"
    odd = [k for k, ok in _NEUTRAL.items() if getattr(config, k, None) not in ok]
    eos = config.eos_token_id
    if odd or not isinstance(eos, int) or config.pad_token_id is None:
        return f"generation settings the static loop does not implement: {odd or 'eos/pad'}"
    return Sampling(bool(config.do_sample), float(config.temperature or 1.0), int(config.top_k or 0),
                    float(config.top_p if config.top_p is not None else 1.0), int(config.max_new_tokens), eos,
                    int(config.pad_token_id))


# --- logits processors: each the same float operations as its transformers counterpart ---

def top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """TopKLogitsWarper: everything below the k-th largest score to -inf."""
    kth = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(scores < kth, -float("inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """TopPLogitsWarper (min_tokens_to_keep=1): drops the least likely tokens whose cumulative probability
    stays within 1 - top_p, always keeping the most likely one."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = 0
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), -float("inf"))


def next_scores(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """generate()'s processors in its order, when sampling: temperature, top-k, top-p."""
    scores = logits
    if s.do_sample:
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k:
            scores = top_k_filter(scores, s.top_k)
        if s.top_p < 1.0:
            scores = top_p_filter(scores, s.top_p)
    return scores


def pick_tokens(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    if do_sample:  # the global generator, as generate() draws: seeded by the caller
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


# --- the static-cache runner: prefill eagerly, then one fixed-shape step per token ---

class StaticRunner:
    """A StaticCache for `rows` sequences of up to `cache_len` tokens and the one-token step over it. The
    step reads only tensors that live as long as the runner (the token, the rows' positions, the cache slot
    and the key mask) and advances them in place, so a CUDA graph of it replays the next token each time."""

    def __init__(self, llm, rows: int, cache_len: int, device: torch.device, dtype: torch.dtype):
        from transformers import StaticCache

        self.llm, self.dtype, self.device = llm, dtype, device
        self.cache = StaticCache(config=llm.config, max_cache_len=cache_len)
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.position = torch.zeros(rows, dtype=torch.long, device=device)  # each row's RoPE position
        self.slot = torch.zeros((), dtype=torch.long, device=device)  # the cache slot the token is written to
        self.keys_valid = torch.zeros(rows, cache_len, dtype=torch.bool, device=device)  # prompt pads masked
        self.slots = torch.arange(cache_len, device=device)
        self.logits: torch.Tensor | None = None  # the step's output, [rows, vocab] fp32
        self.graph = None
        self.failed: str | None = None

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Runs the left-padded prompts into the cache (eagerly: one forward per batch) and returns the
        first token's fp32 logits. Positions follow generate(): the cumulative count of real tokens."""
        self.cache.reset()
        width = embeds.shape[1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with sdpa_without_cudnn():
            hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                    past_key_values=self.cache, use_cache=True).last_hidden_state
            logits = self.llm.lm_head(hidden[:, -1:]).float()[:, -1]
        self.keys_valid.zero_()
        self.keys_valid[:, :width] = mask.bool()
        self.keys_valid[:, width:] = True  # generated slots, opened one by one by `slots <= slot`
        self.position.copy_(positions[:, -1] + 1)
        self.slot.fill_(width)
        return logits

    def _step(self) -> None:
        """The body a graph captures: one token per row through the decoder, logits into self.logits."""
        on_cuda = self.device.type == "cuda"
        # no autocast weight cache: its casts would be freed when the context closes, inside the capture
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=on_cuda and self.dtype != torch.float32,
                            cache_enabled=False), sdpa_without_cudnn():
            mask = (self.keys_valid & (self.slots <= self.slot))[:, None, None, :]
            # a ready mask per layer type: the model builds none (its builder may sync with the host)
            hidden = self.llm.model(input_ids=self.token[:, None], attention_mask={"full_attention": mask},
                                    position_ids=self.position[:, None], past_key_values=self.cache,
                                    use_cache=True).last_hidden_state
            logits = self.llm.lm_head(hidden[:, -1]).float()
        if self.logits is None:
            self.logits = logits
        else:
            self.logits.copy_(logits)
        self.position.add_(1)
        self.slot.add_(1)

    def step(self, tokens: torch.Tensor, graphed: bool) -> torch.Tensor:
        """The next token's fp32 logits after feeding `tokens` [rows]. With graphed, the step is captured at
        its first call and replayed after; a capture that fails leaves the runner eager (logged by the caller)."""
        self.token.copy_(tokens)
        if graphed and self.graph is None and self.failed is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()
        return self.logits

    def _capture(self) -> None:
        """Warm-up steps on a side stream (then the state they advanced is put back: the cache slots they
        wrote are rewritten before any query may see them), then the capture, which runs nothing."""
        saved = [t.clone() for t in self._state()]
        try:
            side = side_stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            for t, s in zip(self._state(), saved):
                t.copy_(s)
            self.graph = self._record()
        except Exception as e:  # a model with a host sync in its forward: decode on, eagerly
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            torch.cuda.synchronize()
            for t, s in zip(self._state(), saved):
                t.copy_(s)

    def _record(self) -> "torch.cuda.CUDAGraph":
        """The capture itself, through CUDAGraph's own begin/end rather than `torch.cuda.graph`, which first
        empties the device and pinned-host caches: inside a training run that would hand back the blocks the
        step and the loader's pinned batches reuse, at every dump. The graph gets its own memory pool (freed
        with it). thread_local: the loader's pinning thread may call CUDA meanwhile, which the global mode
        would count against this capture."""
        graph = torch.cuda.CUDAGraph()
        stream = side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                self._step()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        return graph

    def _state(self) -> list[torch.Tensor]:
        """What a step advances: positions, slot and every cache layer's fill count."""
        return [self.position, self.slot] + [layer.cumulative_length for layer in self.cache.layers]

    def close(self) -> None:
        self.graph = self.cache = self.logits = None


def _cuda_generator(device: torch.device) -> torch.Generator:
    return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]


def rng_mark(device: torch.device):
    """Where the global generator that draws this device's tokens stands: on CUDA its Philox offset, kept
    on the host (reading it is no sync); on CPU its state."""
    return _cuda_generator(device).get_offset() if device.type == "cuda" else torch.get_rng_state()


def rng_restore(device: torch.device, mark) -> None:
    if device.type == "cuda":
        _cuda_generator(device).set_offset(mark)
    else:
        torch.set_rng_state(mark)


def decode(runner: StaticRunner, embeds: torch.Tensor, mask: torch.Tensor, s: Sampling,
           graphed: bool = False, check_every: int = 1) -> torch.Tensor:
    """generate()'s sampling loop over the static runner: the new tokens [rows, <= max_new_tokens], the pad
    token after a row's eos, cut where every row has ended (as generate() returns them).

    generate() asks after every token whether all rows have ended: a host sync per token, during which the
    GPU idles while the host launches the next step. Here the question is asked every `check_every` tokens:
    the steps taken past the end are cut off, and the generator is put back to where it stood after the
    last real token's draw, so the output, and every later draw, are generate()'s."""
    logits = runner.prefill(embeds, mask)
    rows, device = embeds.shape[0], embeds.device
    unfinished = torch.ones(rows, dtype=torch.long, device=device)
    out, alive, marks, checked = [], [], [], 0
    for t in range(s.max_new_tokens):
        if t:
            logits = runner.step(out[-1], graphed)
        tokens = pick_tokens(next_scores(logits, s), s.do_sample)
        tokens = tokens * unfinished + s.pad_token_id * (1 - unfinished)
        out.append(tokens)
        unfinished = unfinished & (tokens != s.eos_token_id).long()
        alive.append(unfinished.any())
        if s.do_sample:
            marks.append(rng_mark(device))
        if (t + 1) % check_every and t + 1 < s.max_new_tokens:
            continue
        ended = [i for i, a in enumerate(torch.stack(alive[checked:]).tolist(), start=checked) if not a]
        if ended:
            out = out[:ended[0] + 1]
            if s.do_sample:
                rng_restore(device, marks[ended[0]])
            break
        checked = t + 1
    return torch.stack(out, 1)


class StaticDecoder:
    """The static loop for one golden dump: a runner per row count (a dump's last batch may be smaller);
    close() frees the caches and graphs (the training step needs the memory)."""

    def __init__(self, llm, cache_len: int, device: torch.device, dtype: torch.dtype, log=print, strict: bool = True,
                 check_every: int | None = None):
        self.llm, self.cache_len, self.device, self.dtype, self.log = llm, cache_len, device, dtype, log
        self.graphed = device.type == "cuda"
        self.check_every = check_every or (STOP_CHECK_EVERY if self.graphed else 1)
        self.strict = strict  # False (golden_decode=auto): an error hands the rest of the dump to generate()
        self.broken: str | None = None
        self.runners: dict[int, StaticRunner] = {}

    def try_generate(self, embeds: torch.Tensor, mask: torch.Tensor, s: Sampling) -> torch.Tensor | None:
        """generate(), or None once it has failed in a non-strict decoder (the caller then runs
        transformers' generate()): a model whose forward the static step does not suit costs a log line,
        not the run."""
        if self.broken:
            return None
        try:
            return self.generate(embeds, mask, s)
        except Exception as e:
            if self.strict:
                raise
            self.broken = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.log(f"[golden] static decoding failed ({self.broken}); generate() for the rest of this dump")
            self.close()
            return None

    def generate(self, embeds: torch.Tensor, mask: torch.Tensor, s: Sampling) -> torch.Tensor:
        rows, width = embeds.shape[:2]
        if width + s.max_new_tokens > self.cache_len:
            raise ValueError(f"prompt of {width} tokens + {s.max_new_tokens} new ones exceeds the static cache "
                             f"of {self.cache_len}")
        if rows not in self.runners:
            self.runners[rows] = StaticRunner(self.llm, rows, self.cache_len, self.device, self.dtype)
        runner = self.runners[rows]
        failed_before = runner.failed
        tokens = decode(runner, embeds, mask, s, self.graphed, self.check_every)
        if runner.failed and not failed_before:
            self.log(f"[golden] CUDA graph capture of the decode step failed ({runner.failed}); decoding eagerly")
        return tokens

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners.clear()
