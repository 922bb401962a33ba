"""Microphone input (clients/mic.py): every way of having no microphone is a clear error."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from clients.mic import MicrophoneError, input_device, load_sounddevice, microphone_source


def has_input_device() -> bool:
    """Whether PortAudio sees a default input device here (most CI machines have none)."""
    try:
        input_device()
    except MicrophoneError:
        return False
    return True


def test_no_input_device_is_a_clear_error() -> None:
    if has_input_device():
        pytest.skip("this machine has a microphone, so there is no missing-device error to see")
    with pytest.raises(MicrophoneError) as caught:
        microphone_source(1.0)
    message = str(caught.value)
    # Either PortAudio is missing, or it is there and finds no input device.
    assert "no microphone" in message or "PortAudio" in message
    assert caught.value.exit_code == 2


def test_a_failed_device_query_names_the_device_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        sd = load_sounddevice()
    except MicrophoneError as exc:
        pytest.skip(f"sounddevice cannot load here: {exc}")

    def no_device(device: Any = None, kind: Any = None) -> Any:
        raise sd.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sd, "query_devices", no_device)
    with pytest.raises(MicrophoneError, match="no microphone") as caught:
        microphone_source(2.0, device="USB")
    assert "'USB'" in str(caught.value) and "--device" in str(caught.value)


def test_an_output_only_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        sd = load_sounddevice()
    except MicrophoneError as exc:
        pytest.skip(f"sounddevice cannot load here: {exc}")
    speakers = {"index": 3, "name": "Speakers", "max_input_channels": 0, "default_samplerate": 48e3}
    monkeypatch.setattr(sd, "query_devices", lambda device=None, kind=None: speakers)
    with pytest.raises(MicrophoneError, match="no input channels"):
        input_device(3)


def test_without_the_sounddevice_package_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    with pytest.raises(MicrophoneError, match="pip install sounddevice"):
        microphone_source(1.0)


def test_a_non_positive_length_is_refused() -> None:
    with pytest.raises(MicrophoneError, match="above 0 s"):
        microphone_source(0.0)
