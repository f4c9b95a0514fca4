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

/// One m-section of an SDP: its kind (`audio`, `video`, `application`), mid and direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub kind: String,
    pub mid: Option<String>,
    pub direction: Option<String>,
}

pub(crate) fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            out.push(Section {
                kind: m.split_whitespace().next().unwrap_or_default().to_string(),
                mid: None,
                direction: None,
            });
        } else if let Some(section) = out.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.mid = Some(mid.trim().to_string());
            } else if let Some(dir) = line
                .strip_prefix("a=")
                .filter(|a| matches!(*a, "sendrecv" | "sendonly" | "recvonly" | "inactive"))
            {
                section.direction = Some(dir.to_string());
            }
        }
    }
    out
}

/// How to change one m-section of a client's offer before str0m reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rewrite {
    Keep,
    /// The server will not send on it: str0m then answers `inactive`.
    Inactive,
    /// The server sends this track on it: str0m copies an offered msid into its answer when it
    /// creates the m-line, which is how the client learns the `PA_x|TR_y` stream.
    Msid {
        stream: String,
        track: String,
    },
}

/// Rewrites the m-sections of `sdp` chosen by `plan` (keyed by mid).
pub(crate) fn rewrite(sdp: &str, plan: &HashMap<String, Rewrite>) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = sdp.lines().map(str::trim_end).collect();
    // Section boundaries and the rewrite of each.
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with("m=") {
            out.push_str(lines[i]);
            out.push_str(eol);
            i += 1;
            continue;
        }
        let end = lines[i + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(lines.len(), |p| i + 1 + p);
        let section = &lines[i..end];
        let mid = section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::trim);
        let rewrite = mid.and_then(|m| plan.get(m)).unwrap_or(&Rewrite::Keep);
        for line in section {
            match rewrite {
                Rewrite::Keep => {}
                Rewrite::Inactive => {
                    if matches!(*line, "a=sendrecv" | "a=sendonly" | "a=recvonly") {
                        out.push_str("a=inactive");
                        out.push_str(eol);
                        continue;
                    }
                }
                Rewrite::Msid { stream, track } => {
                    if line.starts_with("a=msid:")
                        || (line.starts_with("a=ssrc:") && line.contains(" msid:"))
                    {
                        continue;
                    }
                    if line.starts_with("a=mid:") {
                        out.push_str(line);
                        out.push_str(eol);
                        out.push_str(&format!("a=msid:{stream} {track}"));
                        out.push_str(eol);
                        continue;
                    }
                }
            }
            out.push_str(line);
            out.push_str(eol);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod rewrite_tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:- abc\r\na=recvonly\r\na=ssrc:1 msid:- abc\r\na=ssrc:1 cname:x\r\n";

    #[test]
    fn reads_sections() {
        let s = sections(OFFER);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].kind, "audio");
        assert_eq!(s[1].mid.as_deref(), Some("1"));
        assert_eq!(s[1].direction.as_deref(), Some("recvonly"));
        assert_eq!(s[0].direction, None);
    }

    #[test]
    fn rewrites_direction_and_msid() {
        let plan = HashMap::from([
            ("1".to_string(), Rewrite::Inactive),
            (
                "2".to_string(),
                Rewrite::Msid {
                    stream: "PA_x|TR_y".into(),
                    track: "TR_y".into(),
                },
            ),
        ]);
        let out = rewrite(OFFER, &plan);
        let s = sections(&out);
        assert_eq!(s[1].direction.as_deref(), Some("inactive"));
        assert_eq!(s[2].direction.as_deref(), Some("recvonly"));
        assert_eq!(msid_tracks(&out).get("2").map(String::as_str), Some("TR_y"));
        assert!(!out.contains("msid:- abc"));
        assert!(out.contains("a=ssrc:1 cname:x\r\n"));
        assert!(out.starts_with("v=0\r\n") && out.ends_with("\r\n"));
        assert_eq!(
            rewrite(OFFER, &HashMap::new()),
            OFFER,
            "an empty plan changes nothing"
        );
    }
}
