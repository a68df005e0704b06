"""natkit/ice/sdp.py: candidates grouped by m-line and mid, ufrag/pwd, end-of-candidates."""

from __future__ import annotations

import json

from natkit.ice.pasted import parse_candidates

OFFER = "\r\n".join([
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=ice-options:trickle",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0 "
    "network-id 1",
    "a=ice-ufrag:EsAw",
    "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y",
    "a=mid:0",
    "a=candidate:2215734237 1 udp 1686052607 203.0.113.7 46243 typ srflx raddr 192.168.0.196 "
    "rport 46243 generation 0 network-id 1",
    "a=end-of-candidates",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "a=ice-ufrag:Other",
    "a=ice-pwd:cccccccccccccccccccccccc",
    "a=mid:video1",
    "a=candidate:435653019 1 tcp 1518280447 192.168.0.196 9 typ host tcptype active",
    "a=candidate:broken",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=mid:2",
    "",
])


def test_sections_mids_and_ufrags() -> None:
    parsed = parse_candidates(OFFER)
    assert parsed.format == "sdp"
    assert [(s.index, s.media, s.mid) for s in parsed.sections] == [
        (0, "audio", "0"), (1, "video", "video1"), (2, "application", "2")]
    audio, video, data = parsed.sections
    assert len(audio.candidates) == 2 and audio.end_of_candidates
    assert all(c.mid == "0" and c.ufrag == "EsAw" for c in audio.candidates)
    assert [c.mline_index for c in video.candidates] == [1]
    assert video.candidates[0].ufrag == "Other" and not video.end_of_candidates
    assert data.ufrag is None and data.candidates == []
    assert len(parsed.malformed) == 1 and parsed.malformed[0].mid == "video1"


def test_session_level_ufrag_is_inherited() -> None:
    sdp = "v=0\na=ice-ufrag:abcd\na=ice-pwd:pppppppppppppppppppppp\nm=audio 9 RTP/AVP 0\n" \
        "a=mid:a\na=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\n"
    parsed = parse_candidates(sdp)
    assert parsed.sections[0].ufrag == "abcd" and parsed.sections[0].pwd is not None
    assert parsed.candidates[0].ufrag == "abcd"


def test_session_description_json() -> None:
    parsed = parse_candidates(json.dumps({"type": "offer", "sdp": OFFER}))
    assert parsed.format == "sdp" and len(parsed.candidates) == 3
