"""openWakeWord inference on TFLite through ctypes: one thread and the XNNPACK delegate (where, checked
at load, it computes what TFLite's own kernels do).

The maths (mel spectrogram -> embeddings -> wake model, with pyopen-wakeword's windowing and
scaling) reproduce :mod:`pyopen_wakeword` exactly, so scores equal its own; the differences are
the interpreter options (pyopen-wakeword uses the library defaults: many threads, no XNNPACK) and
that the streaming state lives in preallocated buffers, so an 80 ms frame allocates almost nothing.
"""

from __future__ import annotations

import ctypes as C
import logging
import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 1280  # 80 ms
MEL_SAMPLES = 1760  # audio per mel window (hop 1280)
NUM_MELS = 32
EMB_WINDOW = 76  # mel frames per embedding
EMB_STEP = 8
EMB_FEATURES = 96
AUTOFILL_SAMPLES = 8 * SAMPLE_RATE  # pyopen-wakeword starts with 8 s of "new" silence

_LOG = logging.getLogger(__name__)

BUILTIN_MODELS = ("hey_jarvis", "alexa", "okay_nabu", "hey_mycroft", "hey_rhasspy")


class EngineError(Exception):
    """The TFLite library or a model could not be loaded or run."""


def package_dir() -> Path:
    """Directory of the installed pyopen_wakeword package (models and lib/)."""
    import pyopen_wakeword

    return Path(pyopen_wakeword.__file__).resolve().parent


def builtin_model_path(name: str) -> Path:
    return package_dir() / "models" / f"{name}.tflite"


def find_tflite_library() -> Path:
    """pyopen-wakeword's bundled libtensorflowlite_c."""
    libs = sorted((package_dir() / "lib").glob("*tensorflowlite_c.*"))
    if not libs:
        raise EngineError(f"no libtensorflowlite_c in {package_dir() / 'lib'} (is pyopen-wakeword installed for this platform?)")
    return libs[0]


class _XnnOptions(C.Structure):
    # Only the leading fields are stable across TFLite versions; the padding absorbs the rest
    # (the struct is returned through memory on x86-64 and aarch64, so a larger buffer is safe).
    _fields_ = [("num_threads", C.c_int32), ("flags", C.c_uint32), ("_rest", C.c_uint8 * 248)]


_LIB: C.CDLL | None = None


def _lib() -> C.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    path = find_tflite_library()
    try:
        lib = C.CDLL(str(path), mode=os.RTLD_GLOBAL)
    except OSError as exc:
        raise EngineError(f"cannot load {path}: {exc}") from None
    vp, i32, sz = C.c_void_p, C.c_int32, C.c_size_t
    sigs: dict[str, tuple[list, object]] = {
        "TfLiteModelCreateFromFile": ([C.c_char_p], vp),
        "TfLiteModelDelete": ([vp], None),
        "TfLiteInterpreterOptionsCreate": ([], vp),
        "TfLiteInterpreterOptionsDelete": ([vp], None),
        "TfLiteInterpreterOptionsSetNumThreads": ([vp, i32], None),
        "TfLiteInterpreterOptionsAddDelegate": ([vp, vp], None),
        "TfLiteXNNPackDelegateOptionsDefault": ([], _XnnOptions),
        "TfLiteXNNPackDelegateCreate": ([C.POINTER(_XnnOptions)], vp),
        "TfLiteXNNPackDelegateDelete": ([vp], None),
        "TfLiteInterpreterCreate": ([vp, vp], vp),
        "TfLiteInterpreterDelete": ([vp], None),
        "TfLiteInterpreterResizeInputTensor": ([vp, i32, C.POINTER(i32), i32], C.c_int),
        "TfLiteInterpreterAllocateTensors": ([vp], C.c_int),
        "TfLiteInterpreterInvoke": ([vp], C.c_int),
        "TfLiteInterpreterGetInputTensor": ([vp, i32], vp),
        "TfLiteInterpreterGetOutputTensor": ([vp, i32], vp),
        "TfLiteTensorNumDims": ([vp], i32),
        "TfLiteTensorDim": ([vp, i32], i32),
        "TfLiteTensorByteSize": ([vp], sz),
        "TfLiteTensorType": ([vp], C.c_int),
        "TfLiteTensorCopyFromBuffer": ([vp, vp, sz], C.c_int),
        "TfLiteTensorCopyToBuffer": ([vp, vp, sz], C.c_int),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    _LIB = lib
    return lib


_FLOAT32 = 1  # kTfLiteFloat32


class _Interpreter:
    """One interpreter of a loaded model, with or without the XNNPACK delegate."""

    def __init__(self, lib: C.CDLL, model: int, path: Path, *, threads: int, xnnpack: bool,
                 input_shape: tuple[int, ...] | None) -> None:
        self._lib = lib
        self._options = self._delegate = self._interp = None
        self._options = lib.TfLiteInterpreterOptionsCreate()
        lib.TfLiteInterpreterOptionsSetNumThreads(self._options, threads)
        if xnnpack:
            opts = lib.TfLiteXNNPackDelegateOptionsDefault()
            opts.num_threads = threads
            self._delegate = lib.TfLiteXNNPackDelegateCreate(C.byref(opts))
            if not self._delegate:
                self.close()
                raise EngineError("TfLiteXNNPackDelegateCreate failed")
            lib.TfLiteInterpreterOptionsAddDelegate(self._options, self._delegate)
        self._interp = lib.TfLiteInterpreterCreate(model, self._options)
        if not self._interp:
            self.close()
            raise EngineError(f"cannot create a TFLite interpreter for {path}")
        if input_shape is not None:
            dims = (C.c_int32 * len(input_shape))(*input_shape)
            if lib.TfLiteInterpreterResizeInputTensor(self._interp, 0, dims, len(input_shape)) != 0:
                self.close()
                raise EngineError(f"{path}: cannot resize input to {input_shape}")
        if lib.TfLiteInterpreterAllocateTensors(self._interp) != 0:
            self.close()
            raise EngineError(f"{path}: cannot allocate tensors")
        self.input = lib.TfLiteInterpreterGetInputTensor(self._interp, 0)
        self.output = lib.TfLiteInterpreterGetOutputTensor(self._interp, 0)
        if lib.TfLiteTensorType(self.input) != _FLOAT32 or lib.TfLiteTensorType(self.output) != _FLOAT32:
            self.close()
            raise EngineError(f"{path}: expected float32 input and output tensors")
        self.interp = self._interp

    def run(self, x: np.ndarray, out: np.ndarray) -> None:
        """Invoke on float32 ``x``, into float32 ``out`` (both the tensors' sizes); off the audio path."""
        lib = self._lib
        if lib.TfLiteTensorCopyFromBuffer(self.input, x.ctypes.data, x.nbytes) or lib.TfLiteInterpreterInvoke(self.interp) \
                or lib.TfLiteTensorCopyToBuffer(self.output, out.ctypes.data, out.nbytes):
            raise EngineError("TFLite inference failed")

    def close(self) -> None:
        lib = self._lib
        if self._interp:
            lib.TfLiteInterpreterDelete(self._interp)
            self._interp = None
        if self._delegate:
            lib.TfLiteXNNPackDelegateDelete(self._delegate)
            self._delegate = None
        if self._options:
            lib.TfLiteInterpreterOptionsDelete(self._options)
            self._options = None


class TfLiteModel:
    """One .tflite model in an interpreter with ``threads`` threads and (optionally) XNNPACK.

    XNNPACK is used only where it computes what TFLite's own kernels do: both run a probe at load
    (on one x86-64 CPU, XNNPACK's kernels got the mel spectrogram wrong and the wake word was never
    heard). :attr:`xnnpack` says whether it is in use.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1, xnnpack: bool = True,
                 input_shape: tuple[int, ...] | None = None) -> None:
        self.path = Path(path)
        lib = self._lib = _lib()
        self._model = self._interpreter = None
        self.xnnpack = False
        # Bound methods fetched once: the per-frame path is three ctypes calls per model.
        self._copy_in = lib.TfLiteTensorCopyFromBuffer
        self._invoke = lib.TfLiteInterpreterInvoke
        self._copy_out = lib.TfLiteTensorCopyToBuffer
        if not self.path.is_file():
            raise EngineError(f"wake model file {self.path} does not exist")
        self._model = lib.TfLiteModelCreateFromFile(str(self.path).encode())
        if not self._model:
            raise EngineError(f"{self.path} is not a valid TFLite model")
        try:
            plain = _Interpreter(lib, self._model, self.path, threads=threads, xnnpack=False, input_shape=input_shape)
        except EngineError:
            self.close()
            raise
        self._use(plain)
        self.input_shape = tuple(lib.TfLiteTensorDim(self._in, i) for i in range(lib.TfLiteTensorNumDims(self._in)))
        self.input_bytes = int(lib.TfLiteTensorByteSize(self._in))
        self.output_bytes = int(lib.TfLiteTensorByteSize(self._out))
        if xnnpack:
            try:
                fast = _Interpreter(lib, self._model, self.path, threads=threads, xnnpack=True, input_shape=input_shape)
            except EngineError as exc:
                _LOG.warning("%s: %s: running it on TFLite's own kernels", self.path.name, exc)
                return
            try:
                agree = self._agree(plain, fast)
            except EngineError as exc:
                fast.close()
                self.close()
                raise EngineError(f"{self.path.name}: {exc}") from None
            if agree:
                plain.close()
                self._use(fast)
                self.xnnpack = True
            else:
                fast.close()
                _LOG.warning("XNNPACK computes %s wrongly on this CPU: running it on TFLite's own kernels", self.path.name)

    def _use(self, interpreter: _Interpreter) -> None:
        self._interpreter = interpreter
        self._interp, self._in, self._out = interpreter.interp, interpreter.input, interpreter.output

    def _agree(self, plain: _Interpreter, fast: _Interpreter) -> bool:
        """Whether both give the same output (to 1e-3 of its largest value) for a probe: noise, at
        a speech-like level for the mel model, of about the range of its output for the others."""
        probe = np.random.default_rng(1).standard_normal(self.input_bytes // 4).astype(np.float32)
        probe *= 3000.0 if self.path.name == "melspectrogram.tflite" else 2.0
        want, got = (np.zeros(self.output_bytes // 4, dtype=np.float32) for _ in range(2))
        plain.run(probe, want)  # TFLite's own kernels failing: the model cannot run (EngineError)
        try:
            fast.run(probe, got)
        except EngineError:
            return False
        return bool(np.all(np.isfinite(got)) and np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want)) + 1e-6)

    def run(self, src_addr: int, dst_addr: int) -> None:
        """Copy ``input_bytes`` from ``src_addr``, invoke, copy ``output_bytes`` to ``dst_addr``."""
        if self._copy_in(self._in, src_addr, self.input_bytes) or self._invoke(self._interp) \
                or self._copy_out(self._out, dst_addr, self.output_bytes):
            raise EngineError(f"{self.path.name}: TFLite inference failed")

    def close(self) -> None:
        if self._interpreter is not None:
            self._interpreter.close()
            self._interpreter = None
        if self._model:
            self._lib.TfLiteModelDelete(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _Rows:
    """A float32 window store: append rows, read the last ``window`` rows as one contiguous block.

    Appends go to the end of a larger buffer; when it is full the tail is moved to the front
    (rarely), so no per-frame shifting or allocation.
    """

    def __init__(self, width: int, window: int, spare: int = 64) -> None:
        self.width = width
        self.keep = window + spare
        self.buf = np.zeros((self.keep * 8, width), dtype=np.float32)
        self.end = self.keep  # rows [0, end) are valid; zeros before real data
        self.addr = self.buf.ctypes.data
        self.row_bytes = width * 4

    def reserve(self, rows: int) -> int:
        """Make room for ``rows`` new rows; returns the row index they start at."""
        if self.end + rows > len(self.buf):
            self.buf[: self.keep] = self.buf[self.end - self.keep : self.end]
            self.end = self.keep
        start = self.end
        self.end += rows
        return start

    def address(self, row: int) -> int:
        return self.addr + row * self.row_bytes

    def reset(self) -> None:
        self.buf.fill(0.0)
        self.end = self.keep


class OpenWakeWordEngine:
    """Streaming openWakeWord: 16 kHz S16 mono in, one wake-model score per 80 ms out."""

    def __init__(self, model_path: str | os.PathLike[str], *, threads: int = 1, xnnpack: bool = True) -> None:
        models = package_dir() / "models"
        self.threads = threads
        self.mel = TfLiteModel(models / "melspectrogram.tflite", threads=threads, xnnpack=xnnpack, input_shape=(1, MEL_SAMPLES))
        self.emb = TfLiteModel(models / "embedding_model.tflite", threads=threads, xnnpack=xnnpack,
                               input_shape=(1, EMB_WINDOW, NUM_MELS, 1))
        self.ww = TfLiteModel(model_path, threads=threads, xnnpack=xnnpack)
        shape = self.ww.input_shape
        if len(shape) != 3 or shape[2] != EMB_FEATURES or self.ww.output_bytes != 4:
            raise EngineError(f"{model_path}: not an openWakeWord model (input {shape}, expected (1, N, {EMB_FEATURES}))")
        self.windows = shape[1]
        self.mel_frames = self.mel.output_bytes // (4 * NUM_MELS)
        # Audio: rows of 1 sample; mel input is the contiguous block of MEL_SAMPLES samples.
        self._audio = _Rows(1, MEL_SAMPLES + CHUNK, spare=CHUNK * 4)
        self._mels = _Rows(NUM_MELS, EMB_WINDOW, spare=EMB_STEP * 16)
        self._embs = _Rows(EMB_FEATURES, self.windows, spare=32)
        self._score = np.zeros(1, dtype=np.float32)
        self._score_addr = self._score.ctypes.data
        self._zeros = np.zeros(MEL_SAMPLES, dtype=np.float32)
        self._fresh: tuple[list[tuple[np.ndarray, int]], tuple[int, int, int]] | None = None
        self.reset()

    def reset(self) -> None:
        """Back to the state of a fresh start: the model's buffers seeded with 8 s of silence.

        The silence is processed once, at construction; a reset restores that state, so it costs
        a copy on the event loop instead of 100 inferences.
        """
        if self._fresh is None:
            for rows in (self._audio, self._mels, self._embs):
                rows.reset()
            self._new_audio, self._new_mels, self._new_embs = AUTOFILL_SAMPLES, 0, 0
            self._process_chunk(np.zeros(0, dtype=np.int16))
            self._fresh = (
                [(r.buf.copy(), r.end) for r in (self._audio, self._mels, self._embs)],
                (self._new_audio, self._new_mels, self._new_embs),
            )
            return
        rows_state, counters = self._fresh
        for rows, (buf, end) in zip((self._audio, self._mels, self._embs), rows_state):
            np.copyto(rows.buf, buf)
            rows.end = end
        self._new_audio, self._new_mels, self._new_embs = counters

    def process(self, pcm: bytes) -> float:
        """Feed S16LE mono samples (80 ms normally); returns the highest new score (0.0 if none)."""
        samples = np.frombuffer(pcm, dtype=np.int16)
        best = 0.0
        for i in range(0, len(samples), CHUNK):
            best = max(best, self._process_chunk(samples[i : i + CHUNK]))
        return best

    def _process_chunk(self, chunk: np.ndarray) -> float:
        n = len(chunk)
        audio = self._audio
        row = audio.reserve(n)
        audio.buf[row : row + n, 0] = chunk  # int16 -> float32
        # Cap like pyopen-wakeword's 10 s buffer (matters only for the autofill).
        self._new_audio = min(self._new_audio + n, 10 * SAMPLE_RATE)
        best = 0.0
        while self._new_audio >= MEL_SAMPLES:
            start = audio.end - self._new_audio
            if start >= 0:
                src = audio.address(start)
            else:
                # Only right after a start/reset: the window reaches into the autofilled silence.
                zeros = self._zeros
                k = min(-start, MEL_SAMPLES)
                zeros[:k] = 0.0
                zeros[k:] = audio.buf[0 : MEL_SAMPLES - k, 0]
                src = zeros.ctypes.data
            self._new_audio = max(0, self._new_audio - CHUNK)
            best = max(best, self._mel_step(src))
        return best

    def _mel_step(self, src: int) -> float:
        mels = self._mels
        nf = self.mel_frames
        row = mels.reserve(nf)
        self.mel.run(src, mels.address(row))
        block = mels.buf[row : row + nf]
        np.divide(block, 10, out=block)  # same arithmetic as pyopen-wakeword: mels / 10 + 2
        np.add(block, 2, out=block)
        self._new_mels = min(self._new_mels + nf, 970)
        best = 0.0
        while self._new_mels >= EMB_WINDOW:
            start = mels.end - self._new_mels
            self._new_mels = max(0, self._new_mels - EMB_STEP)
            embs = self._embs
            erow = embs.reserve(1)
            self.emb.run(mels.address(start), embs.address(erow))
            self._new_embs = min(self._new_embs + 1, 80)
            while self._new_embs >= self.windows:
                self.ww.run(embs.address(embs.end - self._new_embs), self._score_addr)
                self._new_embs = max(0, self._new_embs - 1)
                score = float(self._score[0])
                if score > best:
                    best = score
        return best

    @property
    def description(self) -> str:
        """How the models run, for ``speaker check``: threads, and XNNPACK where it is used."""
        models = (self.mel, self.emb, self.ww)
        threads = f"{self.threads} thread" + ("s" if self.threads > 1 else "")
        if all(m.xnnpack for m in models):
            return f"tflite, {threads} + XNNPACK"
        if not any(m.xnnpack for m in models):
            return f"tflite, {threads}"
        plain = ", ".join(m.path.name for m in models if not m.xnnpack)
        return f"tflite, {threads} + XNNPACK, but not for {plain}: XNNPACK computed it wrongly on this CPU"

    def close(self) -> None:
        for m in (self.mel, self.emb, self.ww):
            m.close()
