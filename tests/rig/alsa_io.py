"""Helper processes of the ALSA test rig (stdlib only, run as scripts by tests/rig/alsa.py).

``mic FIFO CHUNK_BYTES``: a microphone. Writes CHUNK_BYTES (80 ms) to the FIFO every 80 ms
(silence unless an utterance is queued). Commands on stdin, one JSON object per line:
``{"op": "play", "id": N, "path": RAW}`` queues raw audio already in the FIFO's format;
``{"op": "vanish", "seconds": S}`` closes the FIFO for S seconds (the device disappears).
Events on stdout, one JSON object per line, ``t`` from time.monotonic() (system-wide):
``open``, ``start``/``end`` of each utterance (when its first/last chunk was handed over),
``closed``, ``reader_gone``.

``spk FIFO OUT BYTES_PER_S``: a speaker. Reads the FIFO at real-time pace into OUT, so the
writer blocks like on a sound card; writers may close and reopen the FIFO.

Microphone and speaker must be other processes than the one using ALSA: pyalsaaudio holds
the GIL while the file plugin opens a FIFO, which blocks until the other end is open.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import sys
import threading
import time

F_SETPIPE_SZ = 1031
CHUNK_S = 0.08


def _emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _open_writer(path: str, pipe_size: int) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, pipe_size)
    except OSError:
        pass
    return fd


def mic(path: str, chunk_bytes: int) -> None:
    commands: queue.SimpleQueue[dict] = queue.SimpleQueue()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                commands.put(json.loads(line))
        commands.put({"op": "quit"})

    threading.Thread(target=read_stdin, daemon=True).start()
    pipe_size = max(4096, 1 << (chunk_bytes - 1).bit_length())
    silence = bytes(chunk_bytes)
    fd = _open_writer(path, pipe_size)
    _emit(ev="open", t=time.monotonic())
    pending: list[tuple[int, bytes]] = []  # utterances waiting to be played
    current: tuple[int, memoryview, int] | None = None  # (id, data, offset)
    next_t = time.monotonic()
    while True:
        while True:
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                break
            if cmd["op"] == "quit":
                os.close(fd)
                return
            if cmd["op"] == "play":
                with open(cmd["path"], "rb") as f:
                    data = f.read()
                pad = (-len(data)) % chunk_bytes
                pending.append((cmd["id"], data + bytes(pad)))
            elif cmd["op"] == "vanish":
                os.close(fd)
                _emit(ev="closed", t=time.monotonic())
                time.sleep(cmd["seconds"])
                fd = _open_writer(path, pipe_size)
                _emit(ev="open", t=time.monotonic())
                next_t = time.monotonic()
        if current is None and pending:
            uid, data = pending.pop(0)
            current = (uid, memoryview(data), 0)
        if current is not None:
            uid, data, off = current
            chunk = data[off : off + chunk_bytes]
        else:
            chunk = silence
        try:
            os.write(fd, chunk)
        except BrokenPipeError:
            os.close(fd)
            _emit(ev="reader_gone", t=time.monotonic())
            fd = _open_writer(path, pipe_size)
            _emit(ev="open", t=time.monotonic())
            next_t = time.monotonic()
            continue
        now = time.monotonic()
        if current is not None:
            uid, data, off = current
            if off == 0:
                _emit(ev="start", id=uid, t=now)
            off += chunk_bytes
            if off >= len(data):
                _emit(ev="end", id=uid, t=now)
                current = None
            else:
                current = (uid, data, off)
        next_t += CHUNK_S
        if next_t - now < -0.2:  # fell behind (reader stalled): no catch-up burst
            next_t = now
        if next_t > now:
            time.sleep(next_t - now)


def spk(path: str, out: str, bytes_per_s: int) -> None:
    step = max(2, bytes_per_s // 50)  # 20 ms
    # O_RDWR: the open does not wait for a writer, the pipe is shrunk before any writer can fill
    # it, and writers may come and go (the file plugin reopens it) without an EOF here.
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 4096)
    except OSError:  # a writer already filled it (it did not wait for "open"): read on anyway
        pass
    _emit(ev="open", t=time.monotonic())
    with open(out, "wb", buffering=0) as sink:
        next_t = time.monotonic()
        while True:
            data = os.read(fd, step)
            sink.write(data)
            now = time.monotonic()
            next_t = max(next_t, now - 0.1) + len(data) / bytes_per_s  # no catch-up after a pause
            if next_t > now:
                time.sleep(next_t - now)


if __name__ == "__main__":
    if sys.argv[1] == "mic":
        mic(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "spk":
        spk(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown role {sys.argv[1]!r}")
