//! The few facts the SFU reads from SDP text that str0m does not expose: which msid track id
//! each m-line carries (LiveKit matches a published track to its AddTrack request by it) and the
//! ICE username fragment.

use std::collections::HashMap;

/// mid → msid track id, for every m-section that has both.
pub(crate) fn msid_tracks(sdp: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut mid: Option<&str> = None;
    let mut track: Option<&str> = None;
    let mut flush = |mid: &mut Option<&str>, track: &mut Option<&str>| {
        if let (Some(m), Some(t)) = (mid.take(), track.take()) {
            out.insert(m.to_string(), t.to_string());
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(&mut mid, &mut track);
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.trim());
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            track = msid.split_whitespace().nth(1);
        }
    }
    flush(&mut mid, &mut track);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_msid_per_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:stream-a track-a\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:- track-v\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let m = msid_tracks(sdp);
        assert_eq!(m.get("0").map(String::as_str), Some("track-a"));
        assert_eq!(m.get("1").map(String::as_str), Some("track-v"));
        assert!(!m.contains_key("2"));
    }
}
