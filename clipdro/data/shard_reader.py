"""Reading the raw samples of one shard (a local path or a URL), with bounded retries for URLs.

Shard names are kept as written everywhere (manifests, ``__url__`` of a sample, logs). Opening
one goes through webdataset's ``gopen`` (the tar is then parsed by :mod:`clipdro.data.tar_samples`):
a local path is a file, ``http(s)://`` runs ``curl``,
``pipe:CMD`` runs CMD in a shell and reads its stdout. Schemes webdataset has no opener for
(``s3://`` ...) are opened through a ``pipe:`` command from :data:`DEFAULT_URL_COMMANDS`
(``{url}`` becomes the shell-quoted URL); the run config can replace or add commands.

A URL is a network stream: when it fails part-way (the server goes away, the command exits with
an error), it is opened again, its first k samples (those already read) are skipped without being
decoded, and reading continues, up to ``retries`` times. A local file is not retried (its damage
does not go away). When the tar stream breaks, the sample being read at that moment may be
incomplete: before a retry it is dropped (the retry reads it whole); after the last attempt it is
kept like every sample before the damage (the loader then skips it if a member is missing).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from webdataset.gopen import gopen

from clipdro.data.config import DEFAULT_URL_COMMANDS
from clipdro.data.manifest import is_url
from clipdro.data.tar_samples import tar_samples

log = logging.getLogger(__name__)

def opener_url(url: str, url_commands: dict[str, str]) -> str:
    """What to hand webdataset's ``gopen`` for shard ``url``: a ``pipe:`` command for a scheme in
    ``url_commands``, else ``url`` itself."""
    scheme = urlparse(url).scheme if "://" in url else ""
    command = url_commands.get(scheme)
    return url if command is None else "pipe:" + command.format(url=shlex.quote(url))


def open_url(url: str, url_commands: dict[str, str] | None = None):
    """``url`` opened for reading through webdataset's ``gopen`` (see :func:`opener_url`)."""
    return gopen(opener_url(url, {**DEFAULT_URL_COMMANDS, **(url_commands or {})}))


def describe(error: Exception) -> str:
    """An error as one line: webdataset appends the stream and URL to ``args``; keep the message."""
    message = str(error.args[0]) if error.args else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@dataclass
class ShardRead:
    """The outcome of reading one shard (or a piece of it), filled in while its samples are yielded."""

    url: str
    intact: int = 0  # raw samples of the shard that arrived before any failure, in the attempt that got furthest
    error: Exception | None = None  # why the last attempt stopped before the shard's end (None: it did not)
    failures: list[str] = field(default_factory=list)  # every failed attempt, for the log

    @property
    def retries(self) -> int:
        return len(self.failures) - (self.error is not None)


def _attempt(url: str, url_commands: dict[str, str] | None, errors: list[Exception]) -> Iterator[dict]:
    """One pass over the raw samples of a shard; failures are appended to ``errors``.

    The stream is closed at the end: for a ``pipe:`` (and curl) stream, closing waits for the
    command and raises on a failed exit status, so a download that ends early is not a silent
    loss. Closing after the caller stopped early is not checked (the command then dies of SIGPIPE).
    """
    try:
        stream = open_url(url, url_commands)
    except Exception as error:  # noqa: BLE001 -- any opener failure is this shard's failure
        errors.append(error)
        return
    finished = False
    try:
        yield from tar_samples(stream, url, errors)
        finished = True
    finally:
        try:
            stream.close()
        except Exception as error:  # noqa: BLE001 -- a failed command exit, reported below
            if finished:
                errors.append(error)


def read_shard(url: str, read: ShardRead, start: int = 0, stop: int | None = None, *, retries: int = 0,
               retry_delay_s: float = 1.0, url_commands: dict[str, str] | None = None,
               on_retry: Callable[[ShardRead], None] | None = None) -> Iterator[dict]:
    """Raw samples ``[start, stop)`` of shard ``url`` in tar order; the outcome goes to ``read``.

    Samples before ``start`` are read and passed over, never decoded. A URL that fails part-way is
    retried up to ``retries`` times from the first sample not yet yielded (see the module doc);
    ``on_retry`` is called before each retry.
    """
    retries = retries if is_url(url) else 0
    handled = 0  # raw samples yielded or passed over: a retry skips them
    held, held_index = None, -1  # the latest sample, yielded only once a later one arrives (it is whole then)
    while True:
        errors: list[Exception] = []
        intact = 0
        attempt = _attempt(url, url_commands, errors)
        try:
            for index, sample in enumerate(attempt):
                intact += not errors
                read.intact = max(read.intact, intact)
                if index < handled:
                    continue
                if held is not None and index > held_index:
                    yield held
                    held, handled = None, held_index + 1
                if index < start:
                    handled = index + 1
                    continue
                held, held_index = sample, index  # at index == held_index, a retry's read replaces the earlier one
                if stop is not None and index + 1 >= stop:
                    break
        finally:
            attempt.close()
        if not errors or read.retries >= retries:
            read.error = errors[0] if errors else None
            read.failures += [describe(errors[0])] if errors else []
            if held is not None:  # after the last attempt, the sample at the damage is kept as read
                yield held
            return
        read.failures.append(describe(errors[0]))
        if on_retry is not None:
            on_retry(read)
        time.sleep(retry_delay_s * read.retries)
