"""Rig profiles on a real server: POST /animate's profile and formats, and a stream's profile."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from models.blendshapes import BLENDSHAPE_NAMES
from pmmtalk.rigs import PROFILES
from server.protocol import (
    CLOSE_POLICY_VIOLATION,
    Done,
    End,
    Error,
    Frames,
    Ready,
    Start,
    decode_binary_frames,
    encode_binary_frames,
    parse_server_message,
)
from tests.server.conftest import SAMPLE_WAV, RunningServer, serve

TIMEOUT_S = 60.0
CHUNK_SAMPLES = 3200  # 0.2 s at 16 kHz


def animate(server: RunningServer, **form: str) -> httpx.Response:
    with SAMPLE_WAV.open("rb") as audio:
        return httpx.post(
            f"{server.http}/animate", files={"audio": audio}, data=form, timeout=TIMEOUT_S
        )


def columns(names: list[str]) -> list[int]:
    """Where each of the network's 32 shapes sits among ``names``."""
    lower = [name.lower() for name in names]
    return [lower.index(name.lower()) for name in BLENDSHAPE_NAMES]


@pytest.fixture(scope="module")
def plain(server: RunningServer) -> dict[str, Any]:
    """The default (arkit32) answer for samples/hello.wav."""
    response = animate(server)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_animate_arkit52_carries_the_same_values_in_52_channels(
    server: RunningServer, plain: dict[str, Any]
) -> None:
    response = animate(server, profile="arkit52")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["names"] == list(PROFILES["arkit52"].names)
    frames = np.asarray(body["frames"])
    expected = np.asarray(plain["frames"])
    assert frames.shape == (len(expected), 52) and body["frame_count"] == len(expected)
    slots = columns(body["names"])
    np.testing.assert_allclose(frames[:, slots], expected, atol=1e-6)
    others = [c for c in range(52) if c not in slots]
    assert not frames[:, others].any()


def test_animate_visemes_and_the_livelink_csv(server: RunningServer, plain: dict[str, Any]) -> None:
    visemes = animate(server, profile="visemes15").json()
    frames = np.asarray(visemes["frames"])
    assert visemes["names"][0] == "viseme_sil" and frames.shape == (len(plain["frames"]), 15)
    assert frames.min() >= 0 and frames.max() <= 1
    speaking = np.asarray(plain["frames"]).max(axis=1) > 0.2
    assert frames[speaking, 1:].sum(axis=1).mean() > 0.5  # speech is mostly spoken visemes

    take = animate(server, format="livelink_csv")
    assert take.status_code == 200 and take.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(take.text)))
    assert rows[0][:2] == ["Timecode", "BlendShapeCount"] and len(rows[0]) == 63
    assert len(rows) == len(plain["frames"]) + 1
    jaw = rows[0].index("JawOpen")
    np.testing.assert_allclose(
        [float(row[jaw]) for row in rows[1:]], np.asarray(plain["frames"])[:, 3], atol=2e-6
    )


def test_animate_talkinghead_anim(server: RunningServer, plain: dict[str, Any]) -> None:
    response = animate(server, format="talkinghead")
    assert response.status_code == 200, response.text
    body = response.json()
    anim = body["anim"]
    count = len(plain["frames"])
    assert body["frame_count"] == count and len(anim["dt"]) == count and anim["dt"][0] == 0
    assert list(anim["vs"]) == list(BLENDSHAPE_NAMES)
    np.testing.assert_allclose(anim["vs"]["jawOpen"], np.asarray(plain["frames"])[:, 3], atol=1e-6)


@pytest.mark.parametrize(
    ("form", "match"),
    [
        ({"profile": "arkit51"}, "arkit32, arkit52, livelink61, visemes15"),
        ({"profile": "talkinghead"}, "format=talkinghead"),
        ({"profile": "visemes15", "format": "livelink_csv"}, "fixed columns"),
    ],
)
def test_animate_refuses_unknown_profiles(
    server: RunningServer, form: dict[str, str], match: str
) -> None:
    response = animate(server, **form)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_message" and match in error["message"]


def test_info_lists_the_profiles(server: RunningServer) -> None:
    info = httpx.get(f"{server.http}/info").json()
    assert info["profiles"] == {"arkit32": 32, "arkit52": 52, "livelink61": 61, "visemes15": 15}


def test_binary_frames_carry_any_width_given_on_both_sides() -> None:
    frames = np.random.default_rng(3).random((3, 15), dtype=np.float32)
    payload = encode_binary_frames(7, frames, width=15)
    assert len(payload) == 10 + 3 * 15 * 4 and payload[:4] == b"PMF1"
    start, decoded = decode_binary_frames(payload, width=15)
    assert start == 7
    np.testing.assert_array_equal(decoded, frames)
    with pytest.raises(ValueError, match="3 frames of 32 values need 384 bytes"):
        decode_binary_frames(payload)
    with pytest.raises(ValueError, match=r"\(n, 15\)"):
        encode_binary_frames(0, frames[:, :14], width=15)


async def stream(
    server: RunningServer, speech: np.ndarray, start: Start
) -> tuple[Ready, np.ndarray]:
    """Send all of ``speech`` (int16, 16 kHz) and collect the frames until done."""
    async with connect(server.ws) as ws:
        await ws.send(start.model_dump_json())
        ready = parse_server_message(str(await ws.recv()))
        assert isinstance(ready, Ready), ready
        width = len(ready.names)

        async def send() -> None:
            for i in range(0, len(speech), CHUNK_SAMPLES):
                await ws.send(speech[i : i + CHUNK_SAMPLES].tobytes())
            await ws.send(End().model_dump_json())

        sender = asyncio.create_task(send())
        blocks: list[np.ndarray] = []
        async for raw in ws:
            if isinstance(raw, bytes):
                index, block = decode_binary_frames(raw, width)
            else:
                message = parse_server_message(raw)
                if isinstance(message, Done):
                    break
                assert isinstance(message, Frames), message
                index, block = message.start_index, np.asarray(message.frames).reshape(-1, width)
            assert index == sum(len(b) for b in blocks)
            blocks.append(block)
        await sender
    return ready, np.concatenate(blocks)


def test_a_stream_sends_its_profile_in_json_and_binary(
    server: RunningServer, speech: tuple[np.ndarray, int]
) -> None:
    samples, rate = speech
    assert rate == 16_000
    clip = samples[: 3 * rate]  # 3 s is enough; the three streams run at once

    async def three() -> list[tuple[Ready, np.ndarray]]:
        return await asyncio.gather(
            stream(server, clip, Start(output="binary")),
            stream(server, clip, Start(profile="livelink61")),
            stream(server, clip, Start(profile="visemes15", output="binary")),
        )

    (ready32, frames32), (ready61, frames61), (ready15, frames15) = asyncio.run(
        asyncio.wait_for(three(), TIMEOUT_S)
    )
    assert ready32.names == list(BLENDSHAPE_NAMES)
    assert ready61.names == list(PROFILES["livelink61"].names)
    assert ready15.names == list(PROFILES["visemes15"].names)
    assert frames32.shape == (90, 32)
    assert frames61.shape == (90, 61) and frames15.shape == (90, 15)
    # Sessions batched together agree to 1e-4 (tests/server/test_connection.py).
    np.testing.assert_allclose(frames61[:, columns(ready61.names)], frames32, atol=1e-4)
    # The viseme solve can magnify such tiny differences on single look-alike visemes, so the
    # comparison is on average; gated silence is exact in both.
    mapped = PROFILES["visemes15"].map(frames32.astype(np.float32))
    assert frames15.min() >= 0 and frames15.max() <= 1
    assert np.abs(frames15 - mapped).mean() < 1e-3
    silent = ~frames32.any(axis=1)
    assert silent.any() and (frames15[silent, 0] == 1).all()


def test_a_stream_refuses_an_unknown_profile(server: RunningServer) -> None:
    async def attempt() -> tuple[Error, int | None]:
        async with connect(server.ws) as ws:
            await ws.send(Start(profile="talkinghead").model_dump_json())
            error = parse_server_message(str(await ws.recv()))
            assert isinstance(error, Error), error
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return error, ws.close_code

    error, code = asyncio.run(asyncio.wait_for(attempt(), TIMEOUT_S))
    assert error.code == "bad_message" and code == CLOSE_POLICY_VIOLATION
    assert "arkit52" in error.message and "format=talkinghead" in error.message


def test_a_bad_rig_profile_file_stops_the_app_and_a_good_one_applies(
    tmp_path: Path, plain: dict[str, Any]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[arkit52.channels]\nJawOpen = { gain = 2 }\n")
    with (
        pytest.raises(ValueError, match="did you mean jawOpen"),
        serve(model={"rig_profiles": bad}),
    ):
        pass
    good = tmp_path / "good.toml"
    good.write_text("[arkit32.channels]\njawOpen = { gain = 0.5 }\n")
    with serve(model={"rig_profiles": good}) as server:
        halved = np.asarray(animate(server).json()["frames"])
    expected = np.asarray(plain["frames"])
    np.testing.assert_allclose(halved[:, 3], 0.5 * expected[:, 3], atol=2e-6)
    np.testing.assert_allclose(halved[:, 4:], expected[:, 4:], atol=1e-6)
