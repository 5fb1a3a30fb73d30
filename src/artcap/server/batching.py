"""One inference thread fed from an asyncio queue, so torch never runs in many threads at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from artcap.decode import DecodingConfig
from artcap.server.errors import ApiError

if TYPE_CHECKING:
    from artcap.captioner import Captioner, Description


@dataclass(frozen=True)
class Ask:
    """What a request asks of the model besides the image; requests asking the same are batched together."""

    decoding: DecodingConfig
    emotion: str | None = None  # grounded models: a name or "auto"
    explain: bool = False  # with each word's attention map


@dataclass
class _Job:
    pixels: np.ndarray  # the model's input size: the queue never holds a full-size image
    ask: Ask
    future: asyncio.Future[tuple[Description, float, float]]


class BatchingCaptioner:
    """Requests that wait at the same time and ask for the same thing (`Ask`) go to
    `Captioner.describe` as one batch."""

    def __init__(self, captioner: Captioner, *, max_batch: int = 32, max_queue: int = 256) -> None:
        self.captioner = captioner
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artcap-inference")
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: list[_Job] = []

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="artcap-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            self._in_flight.append(self._queue.get_nowait())
        for job in self._in_flight:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down; retry in a moment"))
        self._executor.shutdown(wait=True)

    async def describe(self, pixels: np.ndarray, ask: Ask) -> tuple[Description, float, float]:
        """Return (description, started, finished): perf_counter() times of the batch that captioned it."""
        job = _Job(pixels, ask, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ApiError(503, "the server is busy (caption queue full); retry in a few seconds") from None
        return await job.future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = batch
            groups: dict[Ask, list[_Job]] = defaultdict(list)
            for job in batch:
                if not job.future.done():  # done = its request timed out or went away
                    groups[job.ask].append(job)
            for ask, jobs in groups.items():
                await self._caption_group(ask, jobs)
            self._in_flight = []

    async def _caption_group(self, ask: Ask, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            captions = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._caption_batch, [job.pixels for job in jobs], ask
            )
        except Exception as err:  # hand every failure to its request instead of killing the worker
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        finished = time.perf_counter()
        for job, text in zip(jobs, captions):
            if not job.future.done():
                job.future.set_result((text, started, finished))

    def _caption_batch(self, pixels: list[np.ndarray], ask: Ask) -> list[Description]:
        captions = self.captioner.describe(pixels, decoding=ask.decoding, emotion=ask.emotion,
                                           with_attention=ask.explain)
        if len(captions) != len(pixels):
            raise RuntimeError(f"captioner returned {len(captions)} captions for {len(pixels)} images")
        return list(captions)
