"""One DeepSeek-V3.2 attention layer with its own paged cache or the caller's, driven request by
request."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Union

from . import _core
from ._arrays import empty_like, int_list, shape_of

# A batch's block tables: one list of page numbers per request, or an int32 [batch, max_pages]
# tensor (rows may be longer than a request needs).
BlockTables = Union[Sequence[Sequence[int]], Any]


class LayerOutput(NamedTuple):
    """What a forward returns: the output hidden states and the path each request took."""

    out: Any
    """[tokens, hidden_size] bf16, in the framework and on the device of the input."""
    paths: list[str]
    """Per request, in the batch's order: "dense_mha", "sparse_mla", "row_split" or
    "masked_mha"."""
    lse: Any = None
    """[tokens, num_heads] float32 when asked for (lse= or return_lse=True), else None: each new
    token's and head's log-sum-exp ln sum_j exp(scale * q.k_j) over the keys its path attends
    to (its whole context on the dense path, its selected keys on the sparse one), as
    mha_prefill and sparse_mla give it, for merging partial attentions."""


class AttentionLayer:
    """A DeepSeek-V3.2 attention layer and its paged cache (latents and indexer keys, one layer).

    config: an AttentionConfig; weights: LayerWeights for it (placed on `device` when they are
    elsewhere). kv_cache: "bf16" (576 values per token for DeepSeek-V3.2) or "fp8" (656 bytes:
    512 e4m3 + 4 f32 scales + 64 bf16). policy: "auto" (each request on its cheaper exact path by
    the cost profile: `profile`, a `dsattn calibrate` JSON file, else the device's built-in one),
    "per-request" (dense MHA where exact, else sparse MLA), "threshold" or "threshold=N" (the
    whole batch takes dense MHA iff every context <= N), "mha" (forced; refused where not exact),
    "mla" (forced) or "masked" (forced masked MHA: sparse MLA's selection as a key mask over dense
    MHA). num_pages: cache pages of
    `page_size` tokens (a multiple of 16 up to 256; default 64). device: "cpu", "cuda" or
    "cuda:N"; default: the weights' device.

    The caller's cache instead of the layer's own: pass `latent_cache`, [num_pages, page_size,
    576] bf16 (or uint16 bits) or [num_pages, page_size, 656] uint8 for the FP8 rows (the byte
    layout FlashMLA and vLLM use; width kv_lora_rank + rope for other configs), and
    `index_key_cache`, [num_pages, page_size, 132] uint8, contiguous, on the layer's device. The
    format, page count and page size then come from them (kv_cache, num_pages and page_size must
    be left out or agree). index_key_layout: how each page of the index-key cache (own or given)
    orders its bytes: "rows" (each token's 128 e4m3 values, then its float32 scale) or
    "page-major" (the page's values token by token, then their scales: vLLM's layout). The
    caller allocates pages and builds the block tables: requests may share pages read-only (a
    prefix cache); a forward writes only each request's new positions and refuses a batch where
    two requests would write the same slot. allocate, free and free_pages are for the layer's
    own cache. The layer keeps the tensors alive.

    Hidden states are packed by request: the rows of request i follow those of request i - 1.
    Every forward takes an optional `out` (written in place and returned; it may be `hidden`
    itself) and, for CUDA tensors, an optional `stream` (an int cudaStream_t; default: the
    current PyTorch or CuPy stream of `hidden`, else the default stream). A refused call raises
    before anything is written. One forward at a time runs per layer; the GIL is released while
    it computes.
    """

    def __init__(
        self,
        config: _core.AttentionConfig,
        weights: _core.LayerWeights,
        kv_cache: str | None = None,
        policy: str = "auto",
        num_pages: int | None = None,
        device: str | None = None,
        page_size: int | None = None,
        profile: str | None = None,
        latent_cache: Any = None,
        index_key_cache: Any = None,
        index_key_layout: str = "rows",
    ) -> None:
        self._layer = _core.AttentionLayer(
            config,
            weights,
            "bf16" if kv_cache is None else kv_cache,
            policy,
            1024 if num_pages is None else num_pages,
            device,
            64 if page_size is None else page_size,
            profile,
            latent_cache,
            index_key_cache,
            index_key_layout,
        )
        if latent_cache is not None:
            given = {"kv_cache": kv_cache, "num_pages": num_pages, "page_size": page_size}
            have = {"kv_cache": self.kv_cache, "num_pages": self.num_pages,
                    "page_size": self.page_size}
            for name, value in given.items():
                if value is not None and value != have[name]:
                    raise ValueError(
                        f"{name}={value!r} disagrees with the given cache tensors, which hold "
                        f"{name}={have[name]!r}")

    @property
    def config(self) -> _core.AttentionConfig:
        return self._layer.config

    @property
    def weights(self) -> _core.LayerWeights:
        """The weights the layer runs (on its device)."""
        return self._layer.weights

    @property
    def device(self) -> str:
        """"cpu" or "cuda:N"."""
        return self._layer.device

    @property
    def policy(self) -> str:
        """The path policy; assign a new one ("auto", "per-request", "threshold=N", "mha", "mla",
        "masked")."""
        return self._layer.policy

    @policy.setter
    def policy(self, policy: str) -> None:
        self._layer.policy = policy

    @property
    def cost_profile(self) -> str | None:
        """The cost profile (JSON) auto plans with; None under other policies, or on a device
        without a built-in profile when none was given (auto then follows per-request's rule)."""
        return self._layer.cost_profile

    @property
    def kv_cache(self) -> str:
        """The latent cache format: "bf16" or "fp8"."""
        return self._layer.kv_cache

    @property
    def index_key_layout(self) -> str:
        """How the index-key cache orders a page's bytes: "rows" or "page-major"."""
        return self._layer.index_key_layout

    @property
    def page_size(self) -> int:
        """Tokens per cache page: position p of a request lives in page table[p // page_size]."""
        return self._layer.page_size

    @property
    def num_pages(self) -> int:
        return self._layer.num_pages

    @property
    def owns_cache(self) -> bool:
        """False when the layer runs on the caller's cache tensors (latent_cache, index_key_cache)."""
        return self._layer.owns_cache

    @property
    def free_pages(self) -> int:
        """Free pages of the layer's own cache (an error on the caller's cache)."""
        return self._layer.free_pages

    def allocate(self, num_tokens: int, block_table: Sequence[int] | None = None) -> list[int]:
        """A request's block table grown to cover positions [0, num_tokens).

        Returns `block_table` (default: empty) followed by the new pages, all or nothing: when
        too few pages are free it raises dsattn.CacheFull and allocates nothing.
        """
        return self._layer.allocate(num_tokens, None if block_table is None else list(block_table))

    def free(self, block_table: Sequence[int]) -> None:
        """Returns every page of a request's block table to the cache (ValueError on a page that
        is out of range or already free; nothing is freed then)."""
        self._layer.free(list(block_table))

    def decode_step(
        self, batch_size: int, max_context: int, tokens_per_request: int = 1
    ) -> DecodeStep:
        """A decode (or, with tokens_per_request > 1, speculative-verify) step of fixed shape
        whose lengths and block tables live in the caller's device tensors: DecodeStep.run does
        no host work, so a CUDA graph can capture it (torch.cuda.graph) and replay it after new
        lengths and tables are written into the same tensors. max_context: the longest context
        (cached tokens plus the step's) a replay may see. The step keeps this layer alive."""
        return DecodeStep(self._layer.decode_step(batch_size, tokens_per_request, max_context))

    def prefill(
        self,
        hidden: Any,
        prefix_lens: Sequence[int],
        extend_lens: Sequence[int],
        block_tables: BlockTables,
        out: Any = None,
        stream: int | None = None,
        sequence_ids: Sequence[int] | None = None,
        lse: Any = None,
        return_lse: bool = False,
    ) -> LayerOutput:
        """New prompt tokens: request i has prefix_lens[i] tokens already cached (0 for a fresh
        prompt; a chunked prefill continues after its earlier chunks) and extend_lens[i] new ones.

        hidden: [sum(extend_lens), hidden_size] bf16 (or uint16 bits), contiguous.
        block_tables[i] must cover prefix_lens[i] + extend_lens[i] positions (see allocate).
        Writes the new tokens' latents and indexer keys to the cache.
        sequence_ids (optional): the engine's id (>= 0) of each request's sequence. With them,
        new tokens go only into pages that are fresh or that the same sequence wrote at the same
        place of its block table, so that requests sharing prefix pages cannot write each
        other's pages even where their block tables are equal up to the page written (without
        them, sequences are told apart by the first page of their block table).
        lse (optional): [sum(extend_lens), num_heads] float32 on the layer's device, written with
        each new token's and head's log-sum-exp (LayerOutput.lse); return_lse=True allocates it
        when it is not given.
        """
        prefix = int_list(prefix_lens, "prefix_lens", 0)
        extend = int_list(extend_lens, "extend_lens", 1)
        return self._forward(False, hidden, prefix, extend, block_tables, out, stream,
                             sequence_ids, lse, return_lse)

    def decode(
        self,
        hidden: Any,
        context_lens: Sequence[int],
        block_tables: BlockTables,
        out: Any = None,
        stream: int | None = None,
        sequence_ids: Sequence[int] | None = None,
        lse: Any = None,
        return_lse: bool = False,
    ) -> LayerOutput:
        """One new token per request after context_lens[i] cached ones.

        hidden: [batch, hidden_size] bf16 (or uint16 bits), contiguous; block_tables[i] must
        cover context_lens[i] + 1 positions. sequence_ids, lse, return_lse: as for prefill.
        """
        context = int_list(context_lens, "context_lens", 0)
        return self._forward(True, hidden, context, [1] * len(context), block_tables, out, stream,
                             sequence_ids, lse, return_lse)

    def verify(
        self,
        hidden: Any,
        prefix_lens: Sequence[int],
        num_tokens: int | Sequence[int],
        block_tables: BlockTables,
        out: Any = None,
        stream: int | None = None,
        sequence_ids: Sequence[int] | None = None,
        lse: Any = None,
        return_lse: bool = False,
    ) -> LayerOutput:
        """Speculative verify: num_tokens[i] draft tokens (or the same count for every request)
        after prefix_lens[i] cached ones, in one decode-style forward.

        hidden: [sum(num_tokens), hidden_size] bf16 (or uint16 bits), contiguous;
        block_tables[i] must cover prefix_lens[i] + num_tokens[i] positions. sequence_ids, lse,
        return_lse: as for prefill.
        """
        prefix = int_list(prefix_lens, "prefix_lens", 0)
        if isinstance(num_tokens, int) and not isinstance(num_tokens, bool):
            if num_tokens < 1:
                raise ValueError(f"num_tokens: expected a value >= 1, got {num_tokens}")
            counts = [num_tokens] * len(prefix)
        else:
            counts = int_list(num_tokens, "num_tokens", 1)
        return self._forward(True, hidden, prefix, counts, block_tables, out, stream,
                             sequence_ids, lse, return_lse)

    def plan(
        self,
        prefix_lens: Sequence[int],
        extend_lens: Sequence[int],
        block_tables: BlockTables,
        sequence_ids: Sequence[int] | None = None,
        mode: str = "prefill",
        stream: int | None = None,
        on_device: bool = False,
    ) -> _core.ForwardPlan:
        """Plans a batch once, for run(): every check of a prefill (or, with mode="decode", of a
        decode or verify) over these lengths and block tables, each request's path under the
        layer's policy, and every table the forward reads (positions, cache slots, each path's
        rows, offsets and key slots, block tables, score windows) built on the layer's device.
        On the layer's own cache the plan claims the pages its new tokens go to, as a forward
        does.

        prefix_lens, extend_lens, block_tables, sequence_ids: as prefill's (extend_lens are the
        token counts of decode and verify too). Returns a ForwardPlan (.paths, .total_tokens).
        A plan runs on this layer or on another of the same shape whose cache has the same
        device, page size, page count and formats (the layers of one model: plan once per step,
        run every layer); each run reads that layer's cache through the planned block tables.

        on_device=True (the caller's cache tensors only): block_tables is an int32 [batch,
        max_pages] tensor on the layer's device that is read on the device only, with no host
        readback; the plan keeps a copy. Its entries cannot be checked on the host: one outside
        the cache is read as page 0, the new tokens on that page are not written, and
        plan.faults() says so (it waits for the stream: not inside a graph capture). Pages listed
        twice, or two requests writing one slot, are not refused: the caller's to avoid.
        """
        if mode not in ("prefill", "decode"):
            raise ValueError(f'mode: expected "prefill" or "decode", got {mode!r}')
        prefix = int_list(prefix_lens, "prefix_lens", 0)
        extend = int_list(extend_lens, "extend_lens", 1)
        ids = None if sequence_ids is None else int_list(sequence_ids, "sequence_ids", 0)
        return self._layer.plan(mode == "decode", prefix, extend, block_tables, stream, ids,
                                on_device)

    def run(
        self,
        plan: _core.ForwardPlan,
        hidden: Any,
        out: Any = None,
        stream: int | None = None,
        lse: Any = None,
        return_lse: bool = False,
    ) -> LayerOutput:
        """The forward of a planned batch (see plan): the same result as prefill (or decode)
        with the plan's arguments, with no planning, no upload and no synchronisation: only the
        layer's kernels are launched, on `stream`. hidden: [plan.total_tokens, hidden_size]
        bf16 (or uint16 bits), contiguous; out, lse, return_lse: as prefill's. A plan made for
        another layer shape or cache geometry is refused, naming the difference."""
        if out is None:
            shape = shape_of(hidden, "hidden", "[tokens, hidden_size]")
            out = empty_like(hidden, shape, "bf16")
        if lse is None and return_lse:
            lse = empty_like(hidden, (plan.total_tokens, self.config.num_heads), "f32")
        paths = self._layer.run(plan, hidden, out, stream, lse)
        return LayerOutput(out, paths, lse)

    def _forward(
        self,
        decode: bool,
        hidden: Any,
        prefix: list[int],
        extend: list[int],
        block_tables: BlockTables,
        out: Any,
        stream: int | None,
        sequence_ids: Sequence[int] | None,
        lse: Any,
        return_lse: bool,
    ) -> LayerOutput:
        ids = None if sequence_ids is None else int_list(sequence_ids, "sequence_ids", 0)
        if out is None:
            shape = shape_of(hidden, "hidden", "[tokens, hidden_size]")
            out = empty_like(hidden, shape, "bf16")
        if lse is None and return_lse:
            lse = empty_like(hidden, (sum(extend), self.config.num_heads), "f32")
        paths = self._layer.forward(decode, hidden, out, prefix, extend, block_tables, stream,
                                    ids, lse)
        return LayerOutput(out, paths, lse)

    def __repr__(self) -> str:
        pages = (f"pages={self.free_pages}/{self.num_pages} free" if self.owns_cache
                 else f"the caller's cache of {self.num_pages} pages")
        return (
            f"AttentionLayer(device={self.device!r}, kv_cache={self.kv_cache!r}, "
            f"policy={self.policy!r}, {pages})"
        )


class DecodeStep:
    """A decode or verify step of an AttentionLayer for capture in the caller's CUDA graph (see
    AttentionLayer.decode_step). Every row takes the sparse path: for contexts <= index_topk the
    indexer's scores and the top-k are skipped inside the kernels, which read the lengths on the
    device, so one capture serves short and long contexts; the output equals the layer's decode
    (or verify) under policy "mla", bit for bit.

    Typical use with PyTorch: run the step once eagerly (the warm-up allocates its temporaries;
    a first run inside a capture raises), capture run() in torch.cuda.graph with static
    hidden / prefix_lens / block_tables / out tensors, then per step copy the new values into
    them and replay. Requests must not share the slots they write; pages they only read may be
    shared; prefix_lens[b] = -1 marks an inactive row (padding a batch to the captured size).
    Keep the step alive as long as a graph that captured it, and run it and replay that graph on
    one stream (they share the step's buffers). Only run() may be captured: other dsattn calls
    raise inside a capture.
    """

    def __init__(self, core: Any) -> None:
        self._step = core
        self._torch_device = None  # a PyTorch CUDA device once run() was given its tensors

    @property
    def batch_size(self) -> int:
        return self._step.batch_size

    @property
    def tokens_per_request(self) -> int:
        return self._step.tokens_per_request

    @property
    def max_context(self) -> int:
        return self._step.max_context

    @property
    def max_pages(self) -> int:
        """Block-table entries each request's row must hold at least."""
        return self._step.max_pages

    @property
    def warm(self) -> bool:
        """True once a run has made the step's buffers: only then may run() be captured."""
        return self._step.warm

    def run(
        self,
        hidden: Any,
        prefix_lens: Any,
        block_tables: Any,
        out: Any = None,
        stream: int | None = None,
    ) -> Any:
        """One step: request b has tokens_per_request new tokens after prefix_lens[b] cached ones.

        hidden: [batch_size * tokens_per_request, hidden_size] bf16, contiguous, packed by
        request. prefix_lens: [batch_size] int32 (-1: an inactive row); block_tables:
        [batch_size, >= max_pages] int32 (rows contiguous; a request's entries past its context
        are not read). All on the layer's
        device; their contents are read there only. Writes the new tokens' latents and indexer
        keys to the cache; returns `out` (allocated like hidden when not given). A length or page
        outside the cache is not an error here (nothing is read on the host): it is made
        harmless and recorded, and check() raises on it.
        """
        if out is None:
            out = empty_like(hidden, shape_of(hidden, "hidden", "[rows, hidden_size]"), "bf16")
        self._step.run(hidden, prefix_lens, block_tables, out, stream)
        device = getattr(hidden, "device", None)
        if getattr(device, "type", None) == "cuda":
            self._torch_device = device
        return out

    def check(self, stream: int | None = None) -> None:
        """Raises ValueError when a run (or a graph's replay of one) since the last check met a
        prefix length below -1, one that leaves no room within max_context, or a block-table
        entry outside the cache (that request wrote nothing and its output is not meaningful);
        clears the record. Waits for `stream` first (default: PyTorch's current stream when
        run() was given PyTorch tensors, else the default stream): call it on the stream of the
        replays, after them."""
        if stream is None and self._torch_device is not None:
            import torch  # run() had its tensors: PyTorch is loaded

            stream = torch.cuda.current_stream(self._torch_device).cuda_stream
        faults = self._step.take_faults(stream)
        if faults:
            raise ValueError("decode step: " + "; ".join(faults))

    def __repr__(self) -> str:
        return (
            f"DecodeStep(batch_size={self.batch_size}, tokens_per_request="
            f"{self.tokens_per_request}, max_context={self.max_context})"
        )
