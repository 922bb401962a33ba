"""A stream's audio bookkeeping: PCM decoding of arbitrary chunks, and the window plans that must
cover every frame once, in order, with exactly the audio each window should see."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.streaming import StreamWindow
from pmmtalk.errors import AudioError, AudioTooLongError, TooLargeError
from server.protocol import Encoding
from server.stream import PcmDecoder, StreamBuffer, WindowPlan, ease_to_neutral

RATE_HZ = 16_000
FPS = 30
WINDOW_IDS = ["default", "no-lookahead", "no-left-context"]
WINDOWS = [
    StreamWindow(1.0, 0.4, 0.4),  # the server's default
    StreamWindow(0.2, 0.1, 0.0),  # no lookahead
    StreamWindow(0.0, 0.2, 0.1),  # no left context
]


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out: list[bytes] = []
    at = 0
    for size in sizes:
        out.append(data[at : at + size])
        at += size
    out.append(data[at:])
    return out


def _decode_all(decoder: PcmDecoder, chunks: list[bytes]) -> np.ndarray:
    decoded = [decoder.decode(c) for c in chunks]
    tail, _ = decoder.flush()
    return np.concatenate([*decoded, tail])


# --- PcmDecoder -------------------------------------------------------------------------------


def test_s16_is_scaled_to_unit_range() -> None:
    pcm = np.array([0, 1, -1, 16384, -32768, 32767], dtype="<i2")
    out = PcmDecoder("pcm_s16le", 1, RATE_HZ).decode(pcm.tobytes())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pcm / 32768.0)


def test_f32_passes_through() -> None:
    pcm = np.array([0.0, 0.5, -0.25, 1.0, -1.0], dtype="<f4")
    out = PcmDecoder("pcm_f32le", 1, RATE_HZ).decode(pcm.tobytes())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pcm)


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
def test_stereo_is_mixed_to_mono(encoding: Encoding) -> None:
    left = np.array([0.5, -0.5, 0.25, 0.0], dtype=np.float32)
    right = np.array([0.0, -0.5, -0.25, 0.75], dtype=np.float32)
    interleaved = np.stack([left, right], axis=1).ravel()
    if encoding == "pcm_s16le":
        data = (interleaved * 32768).astype("<i2").tobytes()
    else:
        data = interleaved.astype("<f4").tobytes()
    out = PcmDecoder(encoding, 2, RATE_HZ).decode(data)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("encoding", "channels"),
    [("pcm_s16le", 1), ("pcm_s16le", 2), ("pcm_f32le", 1), ("pcm_f32le", 3)],
)
def test_samples_split_across_odd_chunks_decode_as_one_chunk(
    encoding: Encoding, channels: int
) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, 1000 * channels)
    if encoding == "pcm_s16le":
        data = (values * 32767).astype("<i2").tobytes()
    else:
        data = values.astype("<f4").tobytes()
    whole = PcmDecoder(encoding, channels, RATE_HZ).decode(data)
    assert whole.size == 1000
    # Odd sizes (1, 3, 5, ...) cut through samples and through multi-channel sample frames.
    sizes = [1, 3, 5, 7, 1, 1, 9, 11, 13, 2, 1, 15, 17, 101, 333]
    pieces = _chunks(data, sizes)
    assert b"".join(pieces) == data
    split = _decode_all(PcmDecoder(encoding, channels, RATE_HZ), pieces)
    np.testing.assert_array_equal(split, whole)


def test_a_half_sample_gives_nothing_until_completed() -> None:
    decoder = PcmDecoder("pcm_s16le", 1, RATE_HZ)
    assert decoder.decode(b"\x00").size == 0
    out = decoder.decode(b"\x40")
    np.testing.assert_array_equal(out, [0x4000 / 32768])


def test_flush_drops_a_partial_sample_so_the_next_utterance_stays_aligned() -> None:
    decoder = PcmDecoder("pcm_s16le", 1, RATE_HZ)
    decoder.decode(b"\x01")
    decoder.flush()
    out = decoder.decode(np.array([1000], dtype="<i2").tobytes())
    np.testing.assert_array_equal(out, [1000 / 32768])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_f32_samples_are_refused(bad: float) -> None:
    pcm = np.array([0.1, bad, 0.2], dtype="<f4")
    with pytest.raises(AudioError, match="NaN or infinite"):
        PcmDecoder("pcm_f32le", 1, RATE_HZ).decode(pcm.tobytes())


def test_48khz_is_resampled_to_16khz_in_a_stream() -> None:
    n = 48_000 + 7
    t = np.arange(n) / 48_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype("<f4")
    data = tone.tobytes()
    decoder = PcmDecoder("pcm_f32le", 1, 48_000)
    rng = np.random.default_rng(1)
    sizes = list(rng.integers(1, 6000, 40))
    out = _decode_all(decoder, _chunks(data, [int(s) for s in sizes]))
    assert out.dtype == np.float32
    assert abs(out.size - n / 3) <= 1
    # The same tone sampled at 16 kHz, away from the edges where the filter rings.
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(out.size) / 16_000)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=1e-3)
    # flush resets the resampler: a second utterance gives the same length again.
    again = _decode_all(decoder, [data])
    assert again.size == out.size


@pytest.mark.parametrize(
    ("rate_hz", "channels", "frames_in", "expected"),
    [
        (16_000, 1, 16_000, 30),
        (16_000, 2, 533, 1),
        (48_000, 1, 3_200, 2),  # 1066.7 samples at 16 kHz would round to 3 frames
        (44_100, 2, 4_411, 4),  # 1600.4 samples at 16 kHz would round to 3 frames
        (44_100, 1, 1, 1),
        (8_000, 1, 0, 0),
    ],
)
def test_flush_counts_frames_on_the_source_clock(
    rate_hz: int, channels: int, frames_in: int, expected: int
) -> None:
    decoder = PcmDecoder("pcm_s16le", channels, rate_hz)
    data = np.zeros(frames_in * channels, dtype="<i2").tobytes()
    for piece in _chunks(data, [3, 5, 1001]):
        decoder.decode(piece)
    decoder.decode(b"\x00")  # half a sample: not counted
    _, frames = decoder.flush()
    assert frames == expected == math.ceil(frames_in * FPS / rate_hz)
    # The count starts again for the next utterance.
    decoder.decode(np.zeros(channels * rate_hz // 10, dtype="<i2").tobytes())
    assert decoder.flush()[1] == 3


# --- StreamBuffer -----------------------------------------------------------------------------


def _expected_wave(audio: np.ndarray, window: StreamWindow, k: int) -> np.ndarray:
    """What window k holds: the audio from k * hop - left context, zeros outside the stream."""
    start = k * window.hop_samples - round(window.left_context_s * RATE_HZ)
    positions = start + np.arange(window.window_samples)
    inside = (positions >= 0) & (positions < audio.size)
    wave = np.zeros(window.window_samples, dtype=np.float32)
    wave[inside] = audio[positions[inside]]
    return wave


def _check_plan(plan: WindowPlan, audio: np.ndarray, window: StreamWindow) -> None:
    k = plan.index
    assert plan.first_frame == k * window.hop_frames
    # The window's first frame sits left_frames before the first frame it answers.
    assert plan.frame_offset == plan.first_frame - window.left_frames
    assert plan.wave.shape == (window.window_samples,)
    assert plan.wave.dtype == np.float32
    np.testing.assert_array_equal(plan.wave, _expected_wave(audio, window, k))


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
@pytest.mark.parametrize("n", [0, 1, 533, 1600, 6400, 16_000 + 1, 41_111])
def test_random_chunks_plan_every_frame_once_in_order(window: StreamWindow, n: int) -> None:
    rng = np.random.default_rng(n)
    audio = rng.uniform(-1, 1, n).astype(np.float32)
    buffer = StreamBuffer(window, max_samples=10 * RATE_HZ)
    plans: list[WindowPlan] = []
    at = 0
    while at < n:
        size = int(rng.integers(1, 4000))
        buffer.push(audio[at : at + size], now=float(at))
        at += size
        # Take in small, random batches, as the engine's inflight limit does.
        plans += buffer.take(int(rng.integers(1, 3)))
    buffer.finish(now=-1.0)
    total = math.ceil(n * FPS / RATE_HZ)
    assert buffer.total_frames == total
    while True:
        more = buffer.take(2)
        if not more:
            break
        plans += more
    assert buffer.done
    covered = [f for plan in plans for f in range(plan.first_frame, plan.first_frame + plan.count)]
    assert covered == list(range(total))
    assert [p.index for p in plans] == list(range(len(plans)))
    assert all(p.count > 0 for p in plans)
    assert buffer.planned_frames == total
    for plan in plans:
        _check_plan(plan, audio, window)


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
def test_a_window_waits_for_its_hop_and_lookahead(window: StreamWindow) -> None:
    buffer = StreamBuffer(window, max_samples=10 * RATE_HZ)
    need = window.hop_samples + window.lookahead_samples
    buffer.push(np.full(need - 1, 0.1, dtype=np.float32), now=1.0)
    assert buffer.take(10) == []
    buffer.push(np.full(1, 0.2, dtype=np.float32), now=2.0)
    (plan,) = buffer.take(10)
    assert (plan.index, plan.first_frame, plan.count) == (0, 0, window.hop_frames)
    assert plan.ready_at == 2.0  # the push that completed its audio
    # The second window needs one more hop.
    buffer.push(np.zeros(window.hop_samples - 1, dtype=np.float32), now=3.0)
    assert buffer.take(10) == []
    buffer.push(np.zeros(1, dtype=np.float32), now=4.0)
    (second,) = buffer.take(10)
    assert (second.index, second.first_frame, second.ready_at) == (1, window.hop_frames, 4.0)


def test_one_big_push_readies_several_windows_and_take_respects_its_limit() -> None:
    window = WINDOWS[0]
    buffer = StreamBuffer(window, max_samples=10 * RATE_HZ)
    buffer.push(np.zeros(5 * window.hop_samples + window.lookahead_samples, np.float32), now=7.0)
    first = buffer.take(2)
    assert [p.index for p in first] == [0, 1]
    rest = buffer.take(10)
    assert [p.index for p in rest] == [2, 3, 4]
    assert all(p.ready_at == 7.0 for p in first + rest)
    assert buffer.take(10) == []


def test_finish_releases_the_tail_at_finish_time() -> None:
    window = WINDOWS[0]
    buffer = StreamBuffer(window, max_samples=10 * RATE_HZ)
    buffer.push(np.ones(100, dtype=np.float32), now=1.0)
    assert buffer.take(10) == [] and not buffer.done
    buffer.finish(now=5.0)
    (plan,) = buffer.take(10)
    assert plan.ready_at == 5.0
    assert plan.count == math.ceil(100 * FPS / RATE_HZ) == 1
    assert buffer.done


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
@pytest.mark.parametrize("extra", [-1, 0, 1, 2])
def test_finish_with_the_source_frame_count_plans_exactly_that_many(
    window: StreamWindow, extra: int
) -> None:
    """Audio resampled from another rate can round to a frame fewer or more than its source
    had; the stream then answers the source's count (padding with silence if needed)."""
    n = 3 * window.hop_samples + 1_000
    audio = np.random.default_rng(extra + 5).uniform(-1, 1, n).astype(np.float32)
    buffer = StreamBuffer(window, max_samples=10 * RATE_HZ)
    buffer.push(audio, now=0.0)
    plans = buffer.take(100)
    planned = buffer.planned_frames
    total = math.ceil(n * FPS / RATE_HZ) + extra
    buffer.finish(now=1.0, total_frames=total)
    plans += buffer.take(100)
    assert buffer.done
    covered = [f for plan in plans for f in range(plan.first_frame, plan.first_frame + plan.count)]
    assert covered == list(range(max(total, planned)))
    for plan in plans:
        _check_plan(plan, audio, window)


def test_an_empty_utterance_has_no_frames() -> None:
    buffer = StreamBuffer(WINDOWS[0], max_samples=RATE_HZ)
    buffer.finish(now=0.0)
    assert buffer.total_frames == 0
    assert buffer.take(10) == []
    assert buffer.done


def test_push_after_finish_is_a_bug() -> None:
    buffer = StreamBuffer(WINDOWS[0], max_samples=RATE_HZ)
    buffer.finish(now=0.0)
    with pytest.raises(RuntimeError):
        buffer.push(np.zeros(10, dtype=np.float32), now=1.0)


def test_push_past_max_samples_is_audio_too_long() -> None:
    buffer = StreamBuffer(WINDOWS[0], max_samples=2 * RATE_HZ)
    buffer.push(np.zeros(2 * RATE_HZ - 10, dtype=np.float32), now=0.0)
    buffer.push(np.zeros(10, dtype=np.float32), now=0.0)  # exactly at the limit is fine
    with pytest.raises(AudioTooLongError, match="longer than 2 s") as caught:
        buffer.push(np.zeros(1, dtype=np.float32), now=0.0)
    assert isinstance(caught.value, TooLargeError)
    assert buffer.received == 2 * RATE_HZ  # the refused chunk was not kept


def test_unanswered_samples_count_what_no_plan_has_taken() -> None:
    window = WINDOWS[0]
    buffer = StreamBuffer(window, max_samples=10 * RATE_HZ)
    assert buffer.unanswered_samples == 0
    received = 3 * window.hop_samples + window.lookahead_samples
    buffer.push(np.zeros(received, dtype=np.float32), now=0.0)
    assert buffer.unanswered_samples == received
    buffer.take(1)
    assert buffer.unanswered_samples == received - window.hop_samples
    buffer.take(10)
    assert buffer.unanswered_samples == window.lookahead_samples
    buffer.finish(now=0.0)
    buffer.take(10)
    assert buffer.unanswered_samples == 0


# --- ease_to_neutral --------------------------------------------------------------------------


def test_ease_to_neutral_goes_from_the_last_frame_to_zero() -> None:
    last = np.linspace(0.05, 0.95, 32, dtype=np.float32)
    eased = ease_to_neutral(last, 6)
    assert eased.shape == (6, 32) and eased.dtype == np.float32
    np.testing.assert_array_equal(eased[-1], np.zeros(32))
    # The first eased frame is close to where the face was, and every shape only falls.
    assert np.abs(eased[0] - last).max() < 0.1
    assert (np.diff(eased, axis=0) <= 0).all()
    assert ((eased >= 0) & (eased <= last)).all()


def test_ease_of_one_frame_is_neutral_and_of_none_is_empty() -> None:
    last = np.full(32, 0.7, dtype=np.float32)
    np.testing.assert_array_equal(ease_to_neutral(last, 1), np.zeros((1, 32)))
    assert ease_to_neutral(last, 0).shape == (0, 32)
