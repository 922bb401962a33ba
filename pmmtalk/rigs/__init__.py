"""Rig outputs: the network's 32 ARKit weights as other rigs' channels, files and streams.

- `profiles`: the profiles (``arkit32``, ``arkit52``, ``livelink61``, ``visemes15``) and their
  mappings;
- `config`: per-profile gain, offset and clamp from a TOML file (`RigConfig`);
- `livelink`: Live Link Face UDP packets and `LiveLinkSink`, which drives Unreal;
- `llf_csv`: Live Link Face CSV takes;
- `talkinghead`: TalkingHead's ``anim`` object;
- `formats`: an animation through a profile, written in any of those formats.

docs/rigs.md describes all of them.
"""

from pmmtalk.rigs.config import RigConfig, RigConfigError, RigMapper
from pmmtalk.rigs.livelink import LIVELINK_PORT, LiveLinkSink, encode_packet
from pmmtalk.rigs.profiles import (
    DEFAULT_PROFILE,
    PROFILES,
    Profile,
    UnknownProfileError,
    get_profile,
)

__all__ = [
    "DEFAULT_PROFILE",
    "LIVELINK_PORT",
    "PROFILES",
    "LiveLinkSink",
    "Profile",
    "RigConfig",
    "RigConfigError",
    "RigMapper",
    "UnknownProfileError",
    "encode_packet",
    "get_profile",
]
