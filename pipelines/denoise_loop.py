"""Step-level continuous batching: one denoising loop that jobs join and leave at step boundaries.

Every member (pipelines.loop_members.Member) carries its own latents, schedule, scheduler and
conditioning; a step runs ONE UNet forward over every member's rows (members whose prompt
embeddings have another length, e.g. long weighted prompts, go in a second forward), with a
per-row timestep, then each member's own scheduler steps its own slice. A job that arrives while
the loop runs is prepared at the next step boundary and is in the next forward; a finished job
is decoded (together with the others finishing at that step) and leaves. Nothing about one
member changes another member's numbers, beyond float effects of the batch size itself.

No host-device synchronisation inside a step: timesteps stay device tensors, progress is Python
counting; the only copy to the host is a finished member's decoded images.

Out of memory: the forward is retried in halves (and the loop keeps the smaller row ceiling);
only a single row that does not fit fails its members.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from pipelines.batching.stats import EngineStats
from pipelines.loop_members import Member, decode, denormalized, is_xl

log = logging.getLogger(__name__)

UNetCall = Callable[..., torch.Tensor]  # (sample, timestep, encoder_hidden_states, added) -> noise


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `rows` (compiled graphs exist for bucket sizes only);
    past the largest bucket, rows itself."""
    return next((size for size in sorted(buckets) if size >= rows), rows)


class DenoiseLoop:
    def __init__(
        self,
        base: DiffusionPipeline,
        vae: Any = None,
        *,
        stats: EngineStats | None = None,
        unet: UNetCall | None = None,
        buckets: Sequence[int] = (),
        max_rows: int | None = None,
        step_timer: Callable[[float], None] | None = None,
    ) -> None:
        """`unet` replaces base.unet for the forward (a torch.compile'd one, say); `buckets`
        then pads each forward's rows to a bucket size so its compiled graphs are reused.
        `step_timer` is told the wall time of each step (without the finished ones' decode)."""
        self.base = base
        self.vae = vae if vae is not None else base.vae
        self.xl = is_xl(base)
        self.stats = stats or EngineStats()
        self._unet = unet if unet is not None else base.unet
        self.buckets = tuple(buckets)
        self.max_rows = max_rows  # rows per UNet call; lowered after running out of memory
        self.step_timer = step_timer
        self.members: list[Member] = []

    @property
    def images(self) -> int:
        return sum(member.images for member in self.members)

    def add(self, member: Member) -> None:
        self.members.append(member)

    def remove(self, member: Member) -> None:
        self.members.remove(member)

    def step(self) -> list[tuple[Member, torch.Tensor]]:
        """Advance every member one step. Returns the members that finished, each with its
        images denormalised to [0, 1] on the CPU (they are no longer in the loop)."""
        if not self.members:
            return []
        started = time.perf_counter()
        noise = self._noise(self.members)
        for member in self.members:
            member.latents = member.scheduler.step(
                noise[member],
                member.timestep,
                member.latents,
                **member.extra_step,
                return_dict=False,
            )[0]
            member.position += 1
        if self.step_timer is not None:
            self.step_timer(time.perf_counter() - started)
        finished = [member for member in self.members if member.done]
        if not finished:
            return []
        self.members = [member for member in self.members if not member.done]
        return self._decode(finished)

    def warm_up(self, width: int, height: int, max_rows: int) -> list[int]:
        """Run the UNet once at every bucket size up to max_rows for this image size, so a
        compiled UNet builds its graphs before clients wait on them. Returns the sizes run."""
        config = self.base.unet.config
        unet = self.base.unet
        tokens = 77  # CLIP's context: what plain prompts give
        sizes = [size for size in self.buckets if size <= bucket_for(max_rows, self.buckets)]
        scale = self.base.vae_scale_factor
        for rows in sizes:
            like = {"device": unet.device, "dtype": unet.dtype}
            sample = torch.zeros(rows, config.in_channels, height // scale, width // scale, **like)
            embeds = torch.zeros(rows, tokens, config.cross_attention_dim, **like)
            added = None
            if self.xl:
                pooled = self.base.text_encoder_2.config.projection_dim
                added = {
                    "text_embeds": torch.zeros(rows, pooled, **like),
                    "time_ids": torch.zeros(rows, 6, **like),
                }
            timestep = torch.full((rows,), 999.0, device=unet.device)
            self._call(sample, timestep, embeds, added)
        return sizes

    # --- the batched forward ---

    def _noise(self, members: list[Member]) -> dict[Member, torch.Tensor]:
        """Each member's guided noise prediction, from as few UNet calls as shapes allow."""
        groups: dict[tuple[Any, ...], list[Member]] = defaultdict(list)
        for member in members:
            groups[(tuple(member.embeds.shape[1:]), member.added is None)].append(member)
        out: dict[Member, torch.Tensor] = {}
        for group in groups.values():
            samples, timesteps = [], []
            for member in group:
                t = member.timestep
                sample = torch.cat([member.latents] * 2) if member.cfg else member.latents
                samples.append(member.scheduler.scale_model_input(sample, t))
                timesteps.append(t.reshape(1).to(torch.float32).expand(member.rows))
            embeds = torch.cat([member.embeds for member in group])
            added = None
            if group[0].added is not None:
                added = {
                    name: torch.cat([member.added[name] for member in group])  # type: ignore[index]
                    for name in group[0].added
                }
            predicted = self._forward(torch.cat(samples), torch.cat(timesteps), embeds, added)
            self.stats.record_forward(sum(member.images for member in group))
            offset = 0
            for member in group:
                rows = predicted[offset : offset + member.rows]
                offset += member.rows
                if member.cfg:
                    uncond, text = rows.chunk(2)
                    rows = uncond + member.job.guidance_scale * (text - uncond)
                out[member] = rows
        return out

    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The UNet over all rows, in pieces of at most max_rows; halved on out-of-memory."""
        rows = sample.shape[0]

        def piece(part: slice) -> torch.Tensor:
            pieces = None if added is None else {k: v[part] for k, v in added.items()}
            return self._call(sample[part], timestep[part], embeds[part], pieces)

        def lower(limit: int) -> None:
            self.max_rows = limit

        return self._in_pieces(rows, min(self.max_rows or rows, rows), piece, lower)

    def _call(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        rows = sample.shape[0]
        size = bucket_for(rows, self.buckets) if self.buckets else rows
        if size > rows:  # pad with copies of the first row; their outputs are dropped
            sample, timestep, embeds = (_pad(x, size) for x in (sample, timestep, embeds))
            added = None if added is None else {k: _pad(v, size) for k, v in added.items()}
        out = self._unet(
            sample,
            timestep,
            encoder_hidden_states=embeds,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        return out[:rows]

    # --- leaving the loop ---

    def _decode(self, finished: list[Member]) -> list[tuple[Member, torch.Tensor]]:
        """Finished members' images, decoded in one VAE batch (in halves on out-of-memory)."""
        latents = torch.cat([member.latents for member in finished])
        count = latents.shape[0]
        decoded = self._in_pieces(
            count, count, lambda part: decode(self.vae, latents[part], self.xl)
        )
        images = denormalized(self.base.image_processor, decoded).cpu()
        out, offset = [], 0
        for member in finished:
            out.append((member, images[offset : offset + member.images]))
            offset += member.images
        return out

    def _in_pieces(
        self,
        count: int,
        limit: int,
        run: Callable[[slice], torch.Tensor],
        lower: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """run() over [0, count) in slices of at most `limit`, concatenated. On out-of-memory
        every slice is halved (lower() told the new limit) and all run again; a single item
        that does not fit raises."""
        while True:
            try:
                pieces = [run(slice(i, i + limit)) for i in range(0, count, limit)]
                return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            except torch.OutOfMemoryError:
                if limit == 1:
                    raise
                log.warning(
                    "out of memory at %d items: retrying in pieces of %d", limit, limit // 2
                )
                limit //= 2
                if lower is not None:
                    lower(limit)
                self.stats.count("oom_splits")
                _free_cache(self.base.unet.device)


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([x, x[:1].expand(size - x.shape[0], *x.shape[1:])])


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
