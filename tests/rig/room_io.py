"""The room as a rig process: reads the speaker FIFO in real time, writes the microphone FIFO.

``python room_io.py SPK_FIFO MIC_FIFO OUTDIR ROOM_JSON`` (SPK_FIFO may be ``pulse:SOCKET``: the
rig's PulseAudio null sink, which reports its delay, heard through its monitor with parec): every 80 ms it takes the next 80 ms the
speaker played (24 kHz S16 mono; silence while nothing plays), converts it to 16 kHz, sends it
through the room of :mod:`tests.rig.room` (soft clipping, device delay, impulse response), adds
microphone noise and any queued near-end talker, and writes the 80 ms chunk to the microphone
FIFO (16 kHz S16 mono). What it wrote goes to OUTDIR/mic.raw and the talker alone to
OUTDIR/near.raw (float32, the same samples), so a test can line them up with what capture saw.
Commands on stdin (JSON lines): ``{"op": "play", "id": N, "path": RAW16K, "gain": G}`` queues a
talker (int16 16 kHz, scaled by G). Events on stdout: ``open``, ``start``/``end`` of a talker,
``echo`` once a second with the echo level. The room keeps the pace of a sound card whose clock
runs ``clock_ppm`` fast (or slow) of the system clock: its microphone, and the FIFO speaker (one
card). The PulseAudio sink keeps the system clock (another card): its audio reaches the
microphone resampled onto the card's clock, as sound does.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.rig.room import Room, soft_clip  # noqa: E402

F_SETPIPE_SZ = 1031
TICK_S = 0.08
IN_RATE, RATE = 24000, 16000
N_IN, N = 1920, 1280


def _emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(spk_path: str, mic_path: str, outdir: str, room_json: str) -> None:
    room = Room(**json.loads(room_json))
    h = room.impulse()
    gain = 10 ** (room.echo_dbfs / 20) / 0.1  # the echo level for a reply at -20 dBFS active
    commands: queue.SimpleQueue[dict] = queue.SimpleQueue()
    pace = 1.0 + room.clock_ppm * 1e-6
    t0 = time.monotonic()

    def clock() -> float:
        """The card's clock: seconds of its samples, on the system clock's scale."""
        return t0 + (time.monotonic() - t0) * pace

    def sleep_until(t: float) -> None:
        time.sleep(max(0.0, (t - clock()) / pace))

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                commands.put(json.loads(line))
        os._exit(0)

    threading.Thread(target=read_stdin, daemon=True).start()
    parec = None
    if spk_path.startswith("pulse:"):
        # A speaker that reports its delay: the rig's PulseAudio null sink, heard through its monitor.
        import subprocess

        parec = subprocess.Popen(["parec", f"--server=unix:{spk_path[6:]}", "-d", "rig_sink.monitor", "--raw",
                                  "--format=s16le", f"--rate={IN_RATE}", "--channels=1", "--latency-msec=20"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert parec.stdout is not None
        spk = parec.stdout.fileno()
    else:
        spk = os.open(spk_path, os.O_RDWR)
        fcntl.fcntl(spk, F_SETPIPE_SZ, 4096)
    # What the loudspeaker plays, on a timeline of the card's clock at 24 kHz: the reader lays each
    # 20 ms it drains where it sounds, contiguous within a stream, so the echo's delay stays put.
    ring = np.zeros(IN_RATE * 10, dtype=np.float32)
    lock = threading.Lock()

    # The PulseAudio sink keeps the system clock: on another card than the room's microphone, what
    # it plays reaches the microphone at the sink's pace, so it is resampled onto the card's clock.
    other_card = soxr.ResampleStream(IN_RATE, IN_RATE * pace, 1, dtype="float32", quality="VHQ") \
        if parec is not None and pace != 1.0 else None

    def read_speaker() -> None:
        step, next_t, cursor = IN_RATE * 2 // 50, clock(), -1
        while True:
            asked = time.monotonic()
            data = os.read(spk, step)
            waited = time.monotonic() - asked > 0.06  # nothing was queued: the speaker had stopped
            now = clock()
            x = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32)
            if other_card is not None:
                x = other_card.resample_chunk(x)
            at = int((now - t0) * IN_RATE)
            # A new stream (after the speaker stopped) starts where it sounds. A reader that was
            # only held up (a busy CPU) finds the speaker's audio queued, and lays it on after
            # the last, as a card's steady clock played it, unless it fell too far behind.
            if cursor < 0 or (at > cursor + IN_RATE * 4 // 100 and waited) or at > cursor + IN_RATE // 5:
                cursor = at
            with lock:
                idx = np.arange(cursor, cursor + len(x)) % len(ring)
                ring[idx] = x
            cursor += len(x)
            if parec is not None:
                continue  # the sink's clock paces the monitor
            # A card's clock: steady, catching up on the reader's own lateness, but restarting
            # after a pause (no burst that would drain the FIFO, the card's buffer, at once).
            next_t = (now if now - next_t > 0.2 else next_t) + len(x) / IN_RATE
            if next_t > now:
                sleep_until(next_t)

    threading.Thread(target=read_speaker, daemon=True).start()
    mic = os.open(mic_path, os.O_RDWR | os.O_NONBLOCK)  # no wait for the reader; capture opens it when it starts
    try:
        # At least a card's capture buffer (320 ms; a pipe holds a power of two pages: 512 ms),
        # so a reader held up that long loses nothing, as on a card.
        fcntl.fcntl(mic, F_SETPIPE_SZ, 16384)
    except OSError:
        pass
    _emit(ev="open", t=time.monotonic())
    mic_log = open(Path(outdir) / "mic.raw", "wb")
    near_log = open(Path(outdir) / "near.raw", "wb")
    rs = soxr.ResampleStream(IN_RATE, RATE, 1, dtype="float32", quality="HQ")
    outbuf = np.zeros(N, dtype=np.float32)  # one frame of slack for soxr's uneven output
    hist = np.zeros(len(h) - 1)
    rng = np.random.default_rng(room.seed + 1000)
    talkers: list[list] = []  # [id, samples, offset]
    echo_e, echo_n = 0.0, 0
    next_t = clock()
    heard = False
    last_end = -1
    while True:
        while True:
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                break
            if cmd["op"] == "play":
                x = np.fromfile(cmd["path"], dtype="<i2").astype(np.float64) / 32768.0 * float(cmd.get("gain", 1.0))
                talkers.append([cmd["id"], x, 0])
        # The 80 ms that sounded up to 40 ms ago (the reader has laid it by then), cleared after use.
        end = int((clock() - t0) * IN_RATE) - IN_RATE * 4 // 100
        if last_end < 0 or abs(end - (last_end + N_IN)) > IN_RATE // 5:  # a steady clock, like an ADC's
            last_end = end
        else:
            last_end += N_IN
        with lock:
            idx = np.arange(last_end - N_IN, last_end) % len(ring)
            take = ring[idx].copy()
            ring[idx] = 0.0
        if not heard and np.abs(take).max() > 100:
            heard = True
            _emit(ev="heard", t=time.monotonic())
        outbuf = np.concatenate([outbuf, rs.resample_chunk(take)])
        played, outbuf = outbuf[:N].astype(np.float64) / 32768.0, outbuf[N:]
        if len(played) < N:
            played = np.concatenate([played, np.zeros(N - len(played))])
        x = np.concatenate([hist, soft_clip(played)])
        echo = np.convolve(x, h, mode="valid") * gain
        hist = x[-(len(h) - 1) :]
        near = np.zeros(N)
        now = time.monotonic()
        for tk in list(talkers):
            uid, s, off = tk
            if off == 0:
                _emit(ev="start", id=uid, t=now)
            piece = s[off : off + N]
            near[: len(piece)] += piece
            tk[2] = off + N
            if tk[2] >= len(s):
                _emit(ev="end", id=uid, t=now)
                talkers.remove(tk)
        out = echo + near + rng.standard_normal(N) * 10 ** (room.noise_dbfs / 20)
        echo_e += float(np.sum(echo**2))
        echo_n += N
        if echo_n >= RATE:
            _emit(ev="echo", t=now, dbfs=round(10 * np.log10(echo_e / echo_n + 1e-20), 1))
            echo_e, echo_n = 0.0, 0
        pcm = np.clip(np.rint(out * 32768.0), -32768, 32767).astype("<i2").tobytes()
        try:
            os.write(mic, pcm)
        except BlockingIOError:
            pass
        mic_log.write(out.astype("<f4").tobytes())
        near_log.write(near.astype("<f4").tobytes())
        mic_log.flush()
        near_log.flush()
        next_t += TICK_S
        now = clock()
        if next_t - now < -0.2:
            next_t = now
        if next_t > now:
            sleep_until(next_t)


if __name__ == "__main__":
    main(*sys.argv[1:5])
